"""The user's crontab: the only caller of the crontab program, and the edit of one marked
block in it that leaves every other byte as it was.

`crontab -l` reads it (a user with no crontab yet reads as empty) and `crontab -` writes
it whole: the program checks what it is given and installs all or nothing. There is no
compare-and-swap: an edit another program makes between the read and the write is lost,
as with `crontab -e` in two terminals at once. The program is $FACTORY_CRONTAB (default
`crontab`), so that tests and unusual machines can point it elsewhere.

Text is kept as bytes decoded with surrogateescape, so that lines which are not UTF-8
come back exactly as they were.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from . import env

TIMEOUT_S = 30


class CrontabError(Exception):
    """The crontab could not be read or written; nothing was changed."""


class BrokenBlock(CrontabError):
    """The crontab holds a begin marker without its end (or the other way round, or twice)."""


def program() -> str:
    """The crontab executable: $FACTORY_CRONTAB, else `crontab` on PATH."""
    name = env.get("FACTORY_CRONTAB", "crontab")
    path = shutil.which(name)
    if path is None:
        raise CrontabError(f"no crontab program '{name}' found (install Debian's cron: ./setup, "
                           "or set FACTORY_CRONTAB to one)")
    return path


def _run(args: list[str], data: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([program(), *args], input=data, capture_output=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CrontabError(f"crontab {' '.join(args)} did not answer within {TIMEOUT_S} s")
    except OSError as e:
        raise CrontabError(f"cannot run the crontab program: {e}")


def _said(p: subprocess.CompletedProcess) -> str:
    return p.stderr.decode(errors="replace").strip() or f"exit {p.returncode}"


def read() -> str:
    """The user's crontab as it stands ('' when they have none yet)."""
    p = _run(["-l"])
    if p.returncode == 0:
        return p.stdout.decode("utf-8", "surrogateescape")
    # "no crontab for USER", exit 1: not an error, only nothing yet
    if p.returncode == 1 and b"no crontab" in p.stderr.lower():
        return ""
    raise CrontabError(f"crontab -l failed: {_said(p)}")


def write(text: str) -> None:
    """Install `text` as the user's whole crontab."""
    p = _run(["-"], text.encode("utf-8", "surrogateescape"))
    if p.returncode != 0:
        raise CrontabError(f"crontab refused the new crontab, so it is unchanged: {_said(p)}")


def find_block(text: str, begin: str, end: str) -> tuple[int, int] | None:
    """The numbers (from 0) of the lines `begin` and `end` in `text`, or None when neither
    is there; BrokenBlock when only one is, either is there twice, or end comes first."""
    lines = text.split("\n")
    starts = [n for n, line in enumerate(lines) if line == begin]
    ends = [n for n, line in enumerate(lines) if line == end]
    if not starts and not ends:
        return None
    if len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0]:
        return starts[0], ends[0]
    what = (f"'{begin}' without its '{end}'" if not ends else f"'{end}' without its '{begin}'" if not starts
            else f"'{begin}' and '{end}' out of order or more than once")
    raise BrokenBlock(f"your crontab holds {what}, so which lines are factory's is not clear; "
                      "nothing was changed (fix it with crontab -e, then run this again)")


def set_block(text: str, begin: str, end: str, block: str | None) -> str:
    """`text` with the lines from `begin` to `end` replaced by `block` (which holds both
    markers and ends with a newline), removed (block None), or, where there is none yet,
    `block` added at the end. Every other line is kept as it was."""
    where = find_block(text, begin, end)
    if where is None:
        if block is None:
            return text
        return text + ("\n" if text and not text.endswith("\n") else "") + block
    first, last = where
    lines = text.split("\n")
    new = block.split("\n")[:-1] if block is not None else []  # its final newline ends the END line
    return "\n".join(lines[:first] + new + lines[last + 1:])


def daemon_runs() -> bool | None:
    """Whether a cron daemon (cron, crond) seems to run on this machine; None: cannot tell."""
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() in ("cron", "crond"):
                    return True
        except OSError:
            continue
    return False
