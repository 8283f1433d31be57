"""The intent layer: intent/{principles,prohibitions,postmortems,specs}/*.md on the main branch.

This module owns its layout. `factory init` lays out the skeleton; later, agents' system
prompts are built from it.
"""

from __future__ import annotations

import os
import re

INTENT_DIR = "intent"

SECTIONS = {
    "principles": "The constitution: what every agent strives toward. One principle per file,\n"
                  "a short title line (`# ...`), then why it matters and what it asks of an agent.\n",
    "prohibitions": "The guardrails: what no agent may do. One per file. A prohibition may carry\n"
                    "YAML front matter with `check: COMMAND`; the gate runs COMMAND at the top of\n"
                    "every branch's merge result, checked out as HEAD (FACTORY_BASE names main's\n"
                    "commit, FACTORY_HEAD the branch's), and refuses the branch when it exits\n"
                    "non-zero. What the branch changes is `git diff $FACTORY_BASE HEAD`:\n\n"
                    "    ---\n    check: test -z \"$(git diff --name-only --diff-filter=D \"$FACTORY_BASE\" HEAD "
                    "-- tests/)\"\n    ---\n    # No test is deleted\n",
    "postmortems": "Case law: one file per root cause, written by factory-postmortem: what was tried,\n"
                   "what failed, the root cause, the contributing factors, what should have happened,\n"
                   "and the principle or prohibition it gave rise to. A lesson's evidence and its\n"
                   "recurrences live in the front matter of the principle or prohibition.\n",
    "specs": "What this repository is meant to do: PRDs and specs. Sensors compare them with\n"
             "what the repository does, and file the differences as issues.\n",
}


# The order agents read the layer in: the constitution, the guardrails, the case law,
# then what the repository is meant to do.
ORDER = ("principles", "prohibitions", "postmortems", "specs")


# Front matter: YAML between a first line `---` and the next line `---`, as static site
# generators read it. Lessons keep their fingerprint, evidence and counts there, and a
# prohibition its `check:`.
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", re.S | re.M)


class FrontMatterError(ValueError):
    """A file's front matter is not a YAML mapping; the message says what is wrong."""


def front_matter(text: str) -> tuple[dict, str]:
    """(metadata, body) of a markdown file; ({}, text) for a file without front matter.
    Raises FrontMatterError when the block between the `---` lines is not a YAML mapping."""
    m = _FRONT_MATTER_RE.match(text)
    if not m:
        return {}, text
    import yaml
    try:
        meta = yaml.safe_load(m.group(1))
    except RecursionError:
        raise FrontMatterError("the front matter is nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 2}" if mark else ""
        raise FrontMatterError(f"the front matter is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise FrontMatterError(f"the front matter is a {type(meta).__name__}, not a mapping of keys")
    return meta, text[m.end():].lstrip("\n")


def with_front_matter(meta: dict, body: str) -> str:
    """A markdown file's text: `meta` as front matter (keys in the order given), then body."""
    import yaml
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16)
    return f"---\n{head}---\n\n{body.strip()}\n"


def _for_prompt(text: str) -> str:
    """A file as agents read it: without its front matter (bookkeeping such as evidence,
    which changes with every recurrence and tells an agent nothing), but with a
    prohibition's `check:`, which the gate will run on its branch."""
    try:
        meta, body = front_matter(text)
    except FrontMatterError:
        return text.strip()  # shown as it is: an agent still learns from it
    check = meta.get("check")
    if isinstance(check, str) and check.strip():
        body = body.rstrip() + f"\n\ncheck: {check.strip()}"
    return body.strip()


def case_law_fence(text: str) -> str:
    """A postmortem as agents read it: between tags named after a hash of the text itself.
    A postmortem quotes what failed code printed (code a model wrote), so it is fenced as
    data, as an issue's text is; the name is the same for the same text (the prompt cache
    still serves it) and no text can hold the tag that closes its own fence, since the
    name depends on the text."""
    import hashlib
    n = 0
    while True:
        tag = "case-law-" + hashlib.sha256(f"{n}:{text}".encode()).hexdigest()[:16]
        if tag not in text:
            return f"<{tag}>\n{text}\n</{tag}>"
        n += 1


def layer_text(files: dict[str, bytes]) -> str:
    """The intent layer as one text, in a stable order (section, then path), so that the
    same layer always gives the same bytes and the prompt cache can serve it."""
    parts = []
    for section in ORDER:
        prefix = f"{INTENT_DIR}/{section}/"
        paths = sorted(p for p in files if p.startswith(prefix) and p.endswith(".md")
                       and os.path.basename(p) != "README.md")
        if not paths:
            continue
        parts.append(f"# {section.capitalize()}\n")
        for p in paths:
            text = _for_prompt(files[p].decode("utf-8", errors="replace"))
            if section == "postmortems":
                text = case_law_fence(text)
            parts.append(f"<file path=\"{p}\">\n{text}\n</file>\n")
    return "\n".join(parts) if parts else "(This repository has no intent layer yet.)\n"


def prohibitions(files: dict[str, bytes]) -> list[dict]:
    """Each prohibition (path, title, check) among `files` (path -> content, as
    Repo.read_tree gives them), in path order. The check is the front matter's `check:`,
    else a line of the body that starts with `check: ` (the older form)."""
    out = []
    prefix = f"{INTENT_DIR}/prohibitions/"
    for path in sorted(files):
        if not path.startswith(prefix) or not path.endswith(".md") or os.path.basename(path) == "README.md":
            continue
        text = files[path].decode("utf-8", errors="replace")
        try:
            meta, body = front_matter(text)
        except FrontMatterError:
            meta, body = {}, text  # read as it is: a `check:` line still counts
        check = meta.get("check")
        if isinstance(check, bool):  # YAML reads `check: false` as a boolean: the command `false`
            check = "true" if check else "false"
        check = str(check) if isinstance(check, (str, int, float)) else None
        if check is None:
            for line in body.splitlines():
                if line.startswith("check: ") and line[7:].strip():
                    check = line[7:].strip()
                    break
        title = next((line.lstrip("# ").strip() for line in body.splitlines() if line.startswith("#")),
                     os.path.basename(path)[:-3])
        out.append({"path": path, "title": title, "check": check.strip() if check else None})
    return out


def skeleton_files() -> dict[str, str]:
    """Relative path -> content of every file `factory init` creates under intent/."""
    files = {}
    for section, text in SECTIONS.items():
        files[os.path.join(INTENT_DIR, section, "README.md")] = f"# intent/{section}\n\n{text}"
    return files


def system_prompt(role_instructions: str, layer: str) -> list[dict]:
    """The system prompt: role instructions, then the intent layer, one cache breakpoint
    after both. Both are the same bytes for every run of a kind on the same commit of the
    intent layer, so every agent after the first reads them from the prompt cache."""
    return [
        {"type": "text", "text": role_instructions},
        {"type": "text", "text": layer, "cache_control": {"type": "ephemeral"}},
    ]
