"""What every factory tool shares: exit codes, JSON Lines in and out, errors, options.

stdout carries data only (one JSON object per line); messages go to stderr. Exit codes:
0 done, 1 failed or "no", 2 usage or bad input (nothing was written); a tool documents
any further code in its --help.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2

EXIT_CODES_HELP = """\b
Exit codes:
  0  done
  1  failed, or the answer is "no" (nothing ready, a claim lost)
  2  usage or bad input; nothing was written"""


class Failed(click.ClickException):
    """The tool could not do what it was asked (exit 1)."""

    exit_code = EXIT_NO

    def __init__(self, tool: str, message: str, code: int | None = None):
        super().__init__(message)
        self.tool = tool
        if code is not None:
            self.exit_code = code  # a tool's own documented code

    def show(self, file=None):
        click.echo(f"{self.tool}: {self.format_message()}", err=True)


class BadInput(Failed):
    """Usage or input was wrong and nothing was written (exit 2)."""

    exit_code = EXIT_USAGE


def emit(obj: dict, pretty: bool = False) -> None:
    if pretty:
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")


def say(tool: str, message: str) -> None:
    click.echo(f"{tool}: {message}", err=True)


def stdin_is_data() -> bool:
    """Read stdin only when something is piped in, never from a person's terminal."""
    try:
        return not sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


class JSONInputError(ValueError):
    """Input that is not the JSON a tool takes; the message says what and where."""


def too_deep(obj, limit: int) -> bool:
    """Whether obj nests containers deeper than limit (iterative: no recursion to exhaust)."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (o.values() if isinstance(o, dict) else o))
    return False


def _not_a_number(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def decode_json(raw: bytes):
    """One JSON value from bytes: strict UTF-8, nesting at most contracts.MAX_JSON_DEPTH.
    Raises JSONInputError (never UnicodeDecodeError or RecursionError); json's own
    JSONDecodeError passes through for the caller to word."""
    from .contracts import MAX_JSON_DEPTH
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONInputError(f"not UTF-8 (byte {e.start + 1} is {raw[e.start:e.start + 1]!r})") from None
    try:
        obj = json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        obj = None
        deep = True
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # an integer of more digits than Python converts, NaN, 1e999
        raise JSONInputError(f"not JSON that can be used ({e})") from None
    else:
        deep = too_deep(obj, MAX_JSON_DEPTH)
    if deep:
        raise JSONInputError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return obj


def read_json_lines(tool: str, stream, *, max_line_bytes: int, name: str = "stdin"):
    """Yield (line number, object) for each non-blank line; BadInput names the bad line."""
    binary = getattr(stream, "buffer", stream)
    for n, raw in enumerate(iter(lambda: binary.readline(max_line_bytes + 2), b""), start=1):
        if len(raw) > max_line_bytes:
            raise BadInput(tool, f"{name} line {n}: longer than {max_line_bytes} bytes; "
                                 "nothing was written (shorten the record)")
        if not raw.strip():
            continue
        try:
            yield n, decode_json(raw.strip())
        except JSONInputError as e:
            raise BadInput(tool, f"{name} line {n}: {e}; nothing was written (give one JSON object per line)")
        except json.JSONDecodeError as e:
            raise BadInput(tool, f"{name} line {n}: not JSON ({e.msg} at column {e.colno}); "
                                 "nothing was written (give one JSON object per line)")


def read_text(tool: str, stream, *, max_bytes: int, what: str) -> str:
    """All of stream as strict UTF-8 text, at most max_bytes; BadInput otherwise."""
    binary = getattr(stream, "buffer", stream)
    raw = binary.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BadInput(tool, f"{what}: over {max_bytes} bytes; nothing was written")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BadInput(tool, f"{what}: line {line} is not UTF-8 (byte {e.start + 1}); nothing was written")


def pretty_option(f):
    return click.option("-p", "--pretty", is_flag=True, help="Output for people instead of JSON Lines.")(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="Print less on stderr.")(f)


def repo_option(f):
    @click.option("-C", "--repo", "repo_path", metavar="DIR", envvar="FACTORY_REPO",
                  type=click.Path(exists=True, file_okay=False),
                  help="The git repository to act on, an existing directory (default: the one "
                       "around the current directory; env FACTORY_REPO).")
    @functools.wraps(f)
    def wrapper(*args, repo_path=None, **kwargs):
        if repo_path:
            os.environ["FACTORY_REPO"] = repo_path
        return f(*args, **kwargs)
    return wrapper


def open_repo(tool: str):
    """The repository the tool acts on (FACTORY_REPO, -C, or around the cwd); exit 2 if none."""
    from .gitstore import GitError, Repo
    try:
        return Repo()
    except GitError as e:
        raise BadInput(tool, str(e))


def load_config(tool: str, repo) -> dict:
    """The repository's factory.yaml with defaults filled in; exit 2 if it is invalid."""
    from . import config
    try:
        return config.load(repo.work_tree() or repo.git_dir)
    except config.ConfigError as e:
        raise BadInput(tool, f"{e}\n(fix factory.yaml; nothing was done)")


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def run_main(cli, tool: str, usage_code: int = EXIT_USAGE) -> int:
    """Run a click command as a tool: map exceptions to exit codes, never a traceback for
    a broken pipe (`factory-issue list | head` is normal use). `usage_code`: what a bad
    option exits with, for a wrapper whose command owns 2 (factory-slot)."""
    try:
        rv = cli.main(prog_name=tool, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        click.echo(f"{tool}: aborted", err=True)
        return 130
    except click.UsageError as e:
        e.show()
        return usage_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except BrokenPipeError:
        # The reader went away; that is its choice, not our failure.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
