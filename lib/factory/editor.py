"""The text-editor tool: Anthropic's `str_replace_based_edit_tool` (text_editor_20250728),
run against the agent's container.

It owns what the model may send (paths, commands, parameters in the shapes real models
produce) and what it gets back: `cat -n` style views, directory listings, a numbered
snippet after each edit, and errors that say what was wrong and how to go on. Files go
in and out through Sandbox.read_file / write_file, so the editor never runs the
model's text in a shell.

Decisions a model cannot see from Anthropic's reference, so they are written here:
- Relative paths (and `./x`, `.`) are taken from the repository, /workspace/repo, which
  is where Anthropic's examples (`"path": "primes.py"`) expect them to land.
- `create` over an existing file overwrites it and says so. The reference refuses; an
  unattended agent then only loses a turn and rewrites the file with bash, and the old
  text is in git anyway.
- A file whose every line ends in CRLF is edited as if it had LF endings and written
  back with CRLF: the model's `old_str` with plain newlines matches, and the file keeps
  its endings. A file with mixed endings is matched byte for byte.
- Bytes that are not UTF-8 are decoded with surrogateescape and encoded back the same
  way, so an edit changes only the text it names; views show them as U+FFFD.
- Tabs are kept as they are (the reference expands them, which rewrites every tab of
  an edited file).
"""

from __future__ import annotations

import posixpath
import re

REPO_DIR = "/workspace/repo"
ROOTS = ("/workspace", "/tmp")   # the same roots Sandbox.read_file / write_file accept
VIEW_LINES = 2_000               # a file view shows at most this many lines ...
MAX_CHARACTERS = 30_000          # ... and characters (announced as the tool's max_characters)
SNIPPET_CONTEXT = 4              # lines shown around an edit
LIST_ENTRIES = 500               # a directory listing shows at most this many entries
READ_LIMIT = 4 << 20             # larger files are for bash (head, sed -n, grep)
COMMANDS = ("view", "create", "str_replace", "insert")

TOOL = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": MAX_CHARACTERS}

_KIND_SCRIPT = ('if [ -d "$1" ]; then echo dir; elif [ -f "$1" ]; then echo file; '
                'elif [ -e "$1" ]; then echo other; else echo missing; fi')
# One exec: what the path is and, for a directory, its listing (2 levels, .git left out).
_LIST_SCRIPT = ('if [ ! -d "$1" ]; then ' + _KIND_SCRIPT + '; exit 0; fi; echo dir; '
                'find "$1" -mindepth 1 -maxdepth 2 -name .git -prune -o -printf "%y %p\\n" 2>/dev/null '
                '| LC_ALL=C sort -k2 | awk -v max="$2" \'NR<=max{print} END{print "total " NR}\'')


class EditorError(Exception):
    """The call cannot be done as given; the message tells the model what to do instead."""


class Editor:
    """Runs one tool call: `Editor(sandbox)(input) -> result text`, or EditorError.
    SandboxGone passes through: the caller decides what a lost container means."""

    def __init__(self, sandbox):
        self.sandbox = sandbox

    def __call__(self, args) -> str:
        if not isinstance(args, dict):
            raise EditorError(f"the tool input must be an object with `command` and `path`, not {_kind(args)}")
        cmd = args.get("command")
        if cmd is None:
            raise EditorError(f"`command` is missing: give one of {', '.join(COMMANDS)}")
        if cmd == "undo_edit":
            raise EditorError("undo_edit is not part of this version of the tool; to go back, use str_replace "
                              "with the old text, or bash: `git diff -- FILE`, `git checkout -- FILE`")
        if cmd not in COMMANDS:
            raise EditorError(f"unknown command {_shown(repr(cmd))}: use one of {', '.join(COMMANDS)}")
        path = resolve(args.get("path"))
        return getattr(self, "_" + cmd)(path, args)

    # -- commands ------------------------------------------------------------------

    def _view(self, path: str, args: dict) -> str:
        view_range = args.get("view_range")
        if view_range is not None:
            view_range = _check_range(view_range)
        try:
            data = self._read(path)
        except FileNotFoundError:
            return self._listing(path, view_range)
        doc = Document(data)
        lines = doc.lines
        n = len(lines)
        if n == 0:
            return f"{path} is empty (0 lines)." + doc.notes()
        first, last, notes = 1, n, []
        if view_range:
            first, last = view_range
            if first > n:
                raise EditorError(f"view_range {view_range}: {path} has {_count(n, 'line')}; "
                                  f"the first line must be between 1 and {n}")
            if last == -1:
                last = n
            elif last > n:
                notes.append(f"[the file ends at line {n}]")
                last = n
        text, shown_last = numbered(lines[first - 1:last], first)
        if shown_last < last:
            notes.append(f"[showing lines {first}-{shown_last} of {n}; view_range [{shown_last + 1}, -1] shows more]")
        return "\n".join([text] + notes) + doc.notes()

    def _listing(self, path: str, view_range) -> str:
        r = self.sandbox.exec(f"set -- {_quote(path)} {LIST_ENTRIES}\n{_LIST_SCRIPT}",
                              timeout=30, max_output=MAX_CHARACTERS * 4)
        out = r.output.split("\n")
        kind = out[0].strip()
        if kind != "dir":
            raise EditorError(self._not_a_file(path, kind))
        if view_range:
            raise EditorError(f"{path} is a directory; view_range applies to files only (view it without view_range)")
        entries, total = [], 0
        for line in out[1:]:
            if line.startswith("total "):
                total = int(line.split()[1])
            elif len(line) > 2:
                entries.append(line[2:] + ("/" if line[0] == "d" else ""))
        head = f"{path}/: files and directories up to 2 levels deep (.git left out)"
        if not entries:
            return f"{path}/ is an empty directory."
        more = [f"[{total - len(entries)} more not shown; list deeper parts with bash]"] if total > len(entries) else []
        return "\n".join([head + ":"] + entries + more)

    def _create(self, path: str, args: dict) -> str:
        text = args.get("file_text")
        if not isinstance(text, str):
            raise EditorError("create needs `file_text`: a string with the whole content of the new file"
                              + _got(text))
        kind, size = self._kind(path)
        if kind not in ("file", "missing"):
            raise EditorError(self._not_a_file(path, kind) + "; create writes files only")
        data = _encode(text, "file_text")
        self._write(path, data)
        lines = len(Document(data).lines)
        if kind == "file":
            return (f"Overwrote {path}: it existed ({size} bytes) and now holds the new text "
                    f"({_count(lines, 'line')}). "
                    "To change part of a file, str_replace is safer; `git diff` shows what changed.")
        return f"Created {path} ({_count(lines, 'line')})."

    def _str_replace(self, path: str, args: dict) -> str:
        old, new = args.get("old_str"), args.get("new_str")
        if not isinstance(old, str):
            raise EditorError("str_replace needs `old_str`: a string, the exact text to replace as it is in "
                              "the file" + _got(old))
        if new is None:
            new = ""   # the reference's meaning: no new_str deletes old_str
        elif not isinstance(new, str):
            raise EditorError("`new_str` must be a string, the text that takes old_str's place (leave it "
                              "out to delete old_str)" + _got(new))
        if old == "":
            raise EditorError("`old_str` is empty: give the exact text to replace (view the file to copy it); "
                              "to add lines use insert, to write a whole file use create")
        doc = self._document(path)
        old, new = doc.normalize(old), doc.normalize(new)
        text = doc.text
        count = text.count(old)
        if count == 0:
            raise EditorError(f"old_str was not found in {path}, so nothing changed. "
                              + _no_match_hint(text, old, doc)
                              + f"View the file (`view` with path {path}) and copy the text exactly, "
                                "with its whitespace and indentation.")
        if count > 1:
            at = [text.count("\n", 0, i) + 1 for i in _find_all(text, old)]
            raise EditorError(f"old_str occurs {count} times in {path} (starting on lines "
                              f"{', '.join(map(str, at))}), so nothing changed. Include more of the "
                              "surrounding lines in old_str so that it matches once.")
        if old == new:
            return f"old_str and new_str are the same; {path} is unchanged."
        at = text.index(old)
        doc.text = text[:at] + new + text[at + len(old):]
        self._write(path, doc.encode())
        first = text.count("\n", 0, at) + 1
        return self._edited(path, doc, first, first + new.count("\n"))

    def _insert(self, path: str, args: dict) -> str:
        line = args.get("insert_line")
        text = args.get("insert_text")
        if text is None:
            text = args.get("new_str")   # the name older versions of the tool (and its docs) use
        if line is None:
            raise EditorError("insert needs `insert_line`: the number of the line after which to insert "
                              "(0 inserts at the top)")
        if not isinstance(line, int) or isinstance(line, bool):
            raise EditorError("`insert_line` must be a whole number, the line after which to insert "
                              "(0 inserts at the top)" + _got(line))
        if not isinstance(text, str):
            raise EditorError("insert needs `insert_text` (or `new_str`): a string, the lines to insert"
                              + _got(text))
        doc = self._document(path)
        lines, n = doc.lines, len(doc.lines)
        if not 0 <= line <= n:
            raise EditorError(f"insert_line {line} is outside {path}, which has {_count(n, 'line')}: "
                              f"use 0 to insert at the top, {n} to insert after the last line")
        text = doc.normalize(text)
        added = (text[:-1] if text.endswith("\n") else text).split("\n")
        final_newline = doc.final_newline if n else text.endswith("\n")
        doc.set_lines(lines[:line] + added + lines[line:], final_newline)
        self._write(path, doc.encode())
        return self._edited(path, doc, line + 1, line + len(added))

    # -- helpers -------------------------------------------------------------------

    def _edited(self, path: str, doc: "Document", first: int, last: int) -> str:
        lines = doc.lines
        if not lines:
            return f"Edited {path}; it is now empty." + doc.notes()
        start = max(1, first - SNIPPET_CONTEXT)
        end = min(len(lines), last + SNIPPET_CONTEXT)
        text, end = numbered(lines[start - 1:end], start)
        return (f"Edited {path}. Lines {start}-{end} as they are now (`cat -n` style):\n{text}\n"
                "Check that this is what you meant (indentation, no duplicated lines); edit again if not."
                + doc.notes())

    def _document(self, path: str) -> "Document":
        try:
            return Document(self._read(path))
        except FileNotFoundError:
            raise EditorError(self._not_a_file(path, self._kind(path)[0])) from None

    def _read(self, path: str) -> bytes:
        from .sandbox import SandboxError, SandboxGone
        try:
            data = self.sandbox.read_file(path, max_bytes=READ_LIMIT)
        except (SandboxGone, FileNotFoundError):
            raise
        except SandboxError as e:
            if "larger than" in str(e):
                raise EditorError(f"{path} is larger than {READ_LIMIT >> 20} MiB; look at parts of it with bash "
                                  "(head, sed -n 'A,Bp', grep -n) and edit it with bash too") from None
            raise EditorError(f"cannot read {path}: {e}") from None
        if b"\0" in data[:8192]:
            raise EditorError(f"{path} looks binary (it has NUL bytes); this tool edits text. "
                              "Use bash for it (file, xxd, cmp).")
        return data

    def _write(self, path: str, data: bytes) -> None:
        from .sandbox import SandboxError, SandboxGone
        try:
            self.sandbox.write_file(path, data)
        except SandboxGone:
            raise
        except SandboxError as e:
            raise EditorError(f"cannot write {path}: {e}; check the directories on the way with `view` "
                              "of the parent") from None

    def _kind(self, path: str) -> tuple[str, int]:
        # wc, not stat: gVisor's statx (Debian's runsc) refuses coreutils' stat; wc fstats.
        r = self.sandbox.exec(f"set -- {_quote(path)}\n{_KIND_SCRIPT}\n[ -f \"$1\" ] && wc -c < \"$1\"",
                              timeout=30, max_output=1000)
        words = r.output.split()
        kind = words[0] if words else "missing"
        return kind, int(words[1]) if kind == "file" and len(words) > 1 and words[1].isdigit() else 0

    @staticmethod
    def _not_a_file(path: str, kind: str) -> str:
        if kind == "dir":
            return f"{path} is a directory, not a file (view lists what is in it)"
        if kind == "other":
            return f"{path} is not a regular file (a device, socket or pipe)"
        parent = posixpath.dirname(path)
        guess = ""
        # The two slips seen most: the repository's path given relative to it again, and
        # the workspace taken for the repository.
        if path.startswith(REPO_DIR + "/workspace/"):
            guess = f"; did you mean {path[len(REPO_DIR):]}?"
        elif path.startswith("/workspace/") and not path.startswith(REPO_DIR + "/"):
            guess = f"; did you mean {REPO_DIR}{path[len('/workspace'):]}?"
        return (f"{path} does not exist (relative paths are taken from {REPO_DIR}){guess} View {parent} to "
                "see what is there, or create the file.")


class Document:
    """A file's text as the editor works on it, and how to give back the same bytes:
    its line endings, its final newline and its undecodable bytes are kept."""

    def __init__(self, data: bytes):
        text = data.decode("utf-8", "surrogateescape")
        self.utf8 = not _has_surrogates(text)
        lf, crlf = text.count("\n"), text.count("\r\n")
        self.crlf = crlf > 0 and crlf == lf
        self.mixed = 0 < crlf < lf
        self.text = text.replace("\r\n", "\n") if self.crlf else text

    @property
    def final_newline(self) -> bool:
        return self.text.endswith("\n")

    @property
    def lines(self) -> list[str]:
        if not self.text:
            return []
        return (self.text[:-1] if self.final_newline else self.text).split("\n")

    def set_lines(self, lines: list[str], final_newline: bool) -> None:
        self.text = "\n".join(lines) + ("\n" if final_newline and lines else "")

    def normalize(self, s: str) -> str:
        """The model's text in this document's terms: CRLF files are worked on as LF."""
        return s.replace("\r\n", "\n") if self.crlf else s

    def encode(self) -> bytes:
        text = self.text.replace("\n", "\r\n") if self.crlf else self.text
        return _encode(text, "the new text")

    def notes(self) -> str:
        notes = []
        if self.crlf:
            notes.append("[the file has CRLF line endings: shown and matched as plain newlines, written back as CRLF]")
        if self.mixed:
            notes.append("[the file mixes CRLF and LF line endings: old_str must match them exactly]")
        if not self.utf8:
            notes.append("[the file is not valid UTF-8: such bytes are shown as \ufffd and kept as they are "
                         "when the file is edited; old_str cannot match them]")
        return "".join("\n" + n for n in notes)


# -- paths -----------------------------------------------------------------------------

def resolve(path) -> str:
    """The absolute, normalized container path for what the model sent, or EditorError."""
    roots = " or ".join(ROOTS)
    if path is None:
        raise EditorError(f"`path` is missing: give a file or directory, relative to {REPO_DIR} "
                          f"(e.g. src/main.py) or absolute under {roots}")
    if not isinstance(path, str):
        raise EditorError(f"`path` must be a string, relative to {REPO_DIR} or absolute under {roots}"
                          + _got(path))
    p = path.strip()
    if not p:
        raise EditorError(f"`path` is empty: give a file or directory, relative to {REPO_DIR} or absolute "
                          f"under {roots}")
    if p.startswith("~"):
        raise EditorError(f"path {_shown(repr(path))}: `~` is not expanded here; give a path relative to "
                          f"{REPO_DIR} or absolute under {roots}")
    full = posixpath.normpath(posixpath.join(REPO_DIR, p))
    full = "/" + full.lstrip("/")   # normpath keeps a leading //
    if any(full == r or full.startswith(r + "/") for r in ROOTS):
        return full
    if p.startswith("/") and ".." not in p.split("/"):
        hint = f"; did you mean {REPO_DIR}{full}?"
    else:
        hint = f" (relative paths are taken from {REPO_DIR})"
    shown = f"path {_shown(repr(path))}" + (f" resolves to {full}, which" if full != p else "")
    raise EditorError(f"{shown} is outside {' and '.join(ROOTS)}, the only places this tool reaches{hint}")


# -- text ------------------------------------------------------------------------------

def numbered(lines: list[str], first: int) -> tuple[str, int]:
    """`cat -n` style (number right-aligned in 6, a tab, the line) of up to VIEW_LINES
    lines and MAX_CHARACTERS characters; (text, number of the last line shown)."""
    out, size, last = [], 0, first - 1
    for i, line in enumerate(lines[:VIEW_LINES]):
        row = f"{first + i:6}\t{_shown(line)}"
        if len(row) > MAX_CHARACTERS:
            row = row[:MAX_CHARACTERS] + f" [... line {first + i} cut at {MAX_CHARACTERS} characters]"
        if out and size + len(row) + 1 > MAX_CHARACTERS:
            break
        out.append(row)
        size += len(row) + 1
        last = first + i
    return "\n".join(out), last


def _check_range(view_range) -> list[int]:
    shape = ("`view_range` must be a list of two whole numbers [first, last] (lines count from 1; "
             "last may be -1 for the end of the file)")
    if (not isinstance(view_range, (list, tuple)) or len(view_range) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)):
        raise EditorError(shape + _got(view_range))
    first, last = view_range
    if first < 1:
        raise EditorError(f"view_range {list(view_range)}: lines count from 1, so the first must be at least 1")
    if last != -1 and last < first:
        raise EditorError(f"view_range {list(view_range)} is reversed or empty: give [first, last] with "
                          "last >= first, or last = -1 for the end of the file")
    return [first, last]


def _no_match_hint(text: str, old: str, doc: Document) -> str:
    if doc.mixed and old.replace("\r\n", "\n") in text.replace("\r\n", "\n"):
        return ("The file mixes CRLF and LF line endings, and old_str must match them exactly "
                "(write \\r\\n where the file has CRLF). ")
    squeeze = lambda s: re.sub(r"\s+", " ", s).strip()
    target = squeeze(old)
    if target and target in squeeze(text):
        # Find the first line of the near match so the model knows where to look.
        lines = text.split("\n")
        head = squeeze(old.strip().split("\n")[0])
        where = next((i + 1 for i, line in enumerate(lines) if head and head in squeeze(line)), None)
        return ("Text that differs only in whitespace (indentation, tabs, line breaks) is there"
                + (f", near line {where}. " if where else ". "))
    if re.search(r"^\s*\d+\t", old, re.M):
        return "old_str seems to include the line numbers of a view; leave them out. "
    return ""


def _find_all(text: str, s: str):
    i = text.find(s)
    while i != -1:
        yield i
        i = text.find(s, i + len(s))


def _has_surrogates(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s)


def _shown(s: str) -> str:
    """Text safe to send to the API: undecodable bytes (and stray surrogates) as U+FFFD."""
    if not _has_surrogates(s):
        return s
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in s)


def _encode(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise EditorError(f"{what} holds characters that cannot be written as UTF-8 (unpaired surrogates); "
                          "write them as the characters themselves") from None


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _kind(v) -> str:
    return "null" if v is None else {bool: "a boolean", int: "a number", float: "a number", str: "a string",
                                     list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _got(v) -> str:
    if v is None:
        return ""
    shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
    return f" (got {_kind(v)}: {_shown(shown)})"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
