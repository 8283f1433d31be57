"""The secret scan of an agent's new commits: may this work leave the sandbox as a branch?

`scan_commits(repo, base, head)` reports every secret-shaped string that the commits in
base..head add: in the lines their diffs add, in their messages, and in the names of the
files they add. A secret a later commit deletes is still found, since it stays in history
once a ref points at it. The harvest refuses to move a ref while this returns anything.

A finding says where, never what: {"commit", "path", "line", "type", "where"}, with `path`
masked like a run record (a file's name can itself be the secret), `path` and `line` None
for a commit message, `line` None for a file name, and `where` one of "content",
"message", "name".

The detectors are the redactor's (`redact.Redactor.find`): detect-secrets' format plugins,
the Anthropic key format, and the values of this process's secret-named environment
variables. Git is read through `gitstore.Repo.log_patches`, from the object store only.

Decided: binary files are scanned too (git shows them as text here), since a keystore or
an uncompressed archive carries a key in plain bytes; what compression or encryption
hides is not seen. Content that a commit only moves (a rename) is not new and not
reported; content a merge takes unchanged from a parent is reported under the commit that
added it, if that commit is in the range, and a merge's own additions under the merge.
"""

from __future__ import annotations

import bisect
import re

from .gitstore import Repo
from .redact import Redactor

_HUNK = re.compile(rb"^(@+) .*?\+(\d+)(?:,\d+)? @+")
_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ESCAPES = {ord("a"): 7, ord("b"): 8, ord("t"): 9, ord("n"): 10, ord("v"): 11, ord("f"): 12,
            ord("r"): 13, ord('"'): 34, ord("\\"): 92}


def scan_commits(repo: Repo, base: str, head: str, redactor: Redactor | None = None) -> list[dict]:
    """Every secret-shaped string the commits in base..head add, oldest commit first."""
    redactor = redactor or Redactor()
    base, head = _commit(repo, base), _commit(repo, head)
    findings: list[dict] = []
    seen: set[tuple] = set()

    def add(commit, path, line, type_, where):
        shown = redactor.text(path) if path is not None else None
        key = (commit, shown, line, type_, where)
        if key not in seen:
            seen.add(key)
            findings.append({"commit": commit, "path": shown, "line": line, "type": type_, "where": where})

    log = repo.log_messages(f"{base}..{head}")
    messages = {c: msg for c, _, msg in log}
    for commit, files in _added(repo.log_patches(base, head)):
        for s in redactor.find(messages.pop(commit, "")):
            add(commit, None, None, s.type, "message")
        for path, new_name, lines in files:
            if new_name:
                for s in redactor.find(path):
                    add(commit, path, None, s.type, "name")
            # One text per file, so a secret is found by one regex pass, not one per line.
            text, starts = _join(lines)
            for s in redactor.find(text):
                line = lines[bisect.bisect_right(starts, s.start) - 1][0]
                add(commit, path, line, s.type, "content")
    for commit, msg in messages.items():  # commits whose patch is empty (e.g. --allow-empty)
        for s in redactor.find(msg):
            add(commit, None, None, s.type, "message")
    order = {c: i for i, (c, _, _) in enumerate(reversed(log))}
    findings.sort(key=lambda f: order.get(f["commit"], -1))
    return findings


def _commit(repo: Repo, rev: str) -> str:
    if _OID.fullmatch(rev):
        return rev
    oid = None if rev.startswith("-") else repo.resolve(rev)
    if oid is None:
        raise ValueError(f"not a commit: '{rev}'")
    return oid


def _join(lines: list[tuple[int, str]]) -> tuple[str, list[int]]:
    starts, pos = [], 0
    for _, content in lines:
        starts.append(pos)
        pos += len(content) + 1
    return "\n".join(c for _, c in lines), starts


def _added(patches: bytes):
    """(commit, [(path, is a new name, [(line number, added text)])]) per commit."""
    commit, files = None, []
    path, new_name, lines = None, False, []
    in_hunk, cols, line_no = False, 1, 0

    def close_file():
        if path is not None and (new_name or lines):
            files.append((path, new_name, lines))

    for raw in patches.split(b"\n"):
        if raw.startswith(b"\0"):
            close_file()
            if commit is not None:
                yield commit, files
            commit, files = raw[1:].decode().strip(), []
            path, new_name, lines, in_hunk = None, False, [], False
        elif raw.startswith(b"diff --git ") or raw.startswith(b"diff --cc ") or raw.startswith(b"diff --combined "):
            close_file()
            path, new_name, lines, in_hunk = _diff_line_path(raw), False, [], False
        elif not in_hunk:
            if raw.startswith(b"+++ "):
                name = raw[4:].rstrip(b"\t")  # git adds a tab after a name with a space
                if name != b"/dev/null":
                    path = _strip_prefix(_unquote(name))
            elif raw.startswith(b"rename to ") or raw.startswith(b"copy to "):
                path, new_name = _unquote(raw.split(b" to ", 1)[1]), True
            elif raw.startswith(b"new file mode"):
                new_name = True
            elif raw.startswith(b"@@"):
                in_hunk, cols, line_no = _hunk(raw)
        elif raw.startswith(b"@@"):
            in_hunk, cols, line_no = _hunk(raw)
        elif raw.startswith(b"\\"):
            continue  # "\ No newline at end of file"
        else:
            marks = raw[:cols]
            if marks and marks == b"+" * cols:
                lines.append((line_no, raw[cols:].decode(errors="replace")))
                line_no += 1
            elif b"-" not in marks:
                line_no += 1  # context: in the new file, not added
    close_file()
    if commit is not None:
        yield commit, files


def _hunk(raw: bytes) -> tuple[bool, int, int]:
    m = _HUNK.match(raw)
    if not m:
        return False, 1, 0
    return True, len(m.group(1)) - 1, int(m.group(2))


def _diff_line_path(raw: bytes) -> str | None:
    """The new path named on a `diff --git a/X b/Y` or `diff --cc X` line. It matters only
    for a file with no `+++` line (an empty new file), whose two names are the same."""
    if raw.startswith(b"diff --cc ") or raw.startswith(b"diff --combined "):
        return _unquote(raw.split(b" ", 2)[2])
    rest = raw[len(b"diff --git "):]
    if rest.startswith(b'"'):
        m = re.match(rb'("(?:[^"\\]|\\.)*"|\S+) ("(?:[^"\\]|\\.)*"|.+)$', rest)
        return _strip_prefix(_unquote(m.group(2))) if m else None
    n = (len(rest) - 5) // 2
    if rest[:2] == b"a/" and rest[2 + n:] == b" b/" + rest[2:2 + n]:
        return rest[2:2 + n].decode(errors="replace")
    return None


def _strip_prefix(path: str) -> str:
    return path[2:] if path.startswith(("a/", "b/")) else path


def _unquote(name: bytes) -> str:
    """A name as git's C-style quoting prints it ("a\\tb", "\\303\\251"), back to text."""
    if not (len(name) >= 2 and name.startswith(b'"') and name.endswith(b'"')):
        return name.decode(errors="replace")
    out, i, body = bytearray(), 0, name[1:-1]
    while i < len(body):
        c = body[i]
        if c == 92 and i + 1 < len(body):
            nxt, octal = body[i + 1], body[i + 1:i + 4]
            if len(octal) == 3 and all(48 <= d <= 55 for d in octal):
                out.append(int(octal, 8))
                i += 4
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode(errors="replace")
