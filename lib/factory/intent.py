"""The intent layer: intent/{principles,prohibitions,postmortems,specs}/*.md on the main branch.

This module owns its layout. `factory init` lays out the skeleton; later, agents' system
prompts are built from it.
"""

from __future__ import annotations

import os

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
    "postmortems": "Case law: one file per failure, written by factory-postmortem: the root cause,\n"
                   "the contributing factors, what should have happened, and the principle or\n"
                   "prohibition it gave rise to.\n",
    "specs": "What this repository is meant to do: PRDs and specs. Sensors compare them with\n"
             "what the repository does, and file the differences as issues.\n",
}


# The order agents read the layer in: the constitution, the guardrails, the case law,
# then what the repository is meant to do.
ORDER = ("principles", "prohibitions", "postmortems", "specs")


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
            parts.append(f"<file path=\"{p}\">\n{files[p].decode('utf-8', errors='replace').strip()}\n</file>\n")
    return "\n".join(parts) if parts else "(This repository has no intent layer yet.)\n"


def front_matter(text: str) -> tuple[dict, str]:
    """(the YAML front matter between leading `---` lines, the rest). No front matter, or
    front matter that is not a YAML mapping, gives ({}, text)."""
    import yaml
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 3)
    if end < 0:
        return {}, text
    try:
        meta = yaml.safe_load(text[4:end + 1])
    except yaml.YAMLError:
        return {}, text
    rest = text[end + 4:]
    return (meta, rest.lstrip("\n")) if isinstance(meta, dict) else ({}, text)


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
        meta, body = front_matter(text)
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
