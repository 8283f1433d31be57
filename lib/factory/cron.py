"""The crontab lines for a repository's schedules: what `factory cron` prints and installs.

One block per repository, between markers that name it, so that each repository on the
machine keeps its own block and `factory cron uninstall` removes exactly its own:

    # BEGIN factory /home/ann/calc
    # ... a comment ...
    0 * * * * cd /home/ann/calc && PATH=... /usr/bin/chronic /opt/factory/bin/factory-slot sensor -- /opt/factory/bin/factory-sense tests --file
    # END factory /home/ann/calc

A line per sensor and adversary with a schedule. Each runs `factory-sense NAME --file`
under `factory-slot KIND`, so that what cron starts counts against the slot quotas like
what the supervisor starts. Everything is named by an absolute path, and PATH is set on
the line (not as a crontab variable line, which would hold for every line after the
block too), so that cron, which starts with a bare environment, finds python, git and
docker where this shell finds them. The KEPT_BY_CRON variables set here go along (env.py).

Output is never thrown away. Where chronic (moreutils) is installed and a mailer is there
for cron to mail with, the run goes under chronic: silent when it succeeds, mailed in
full when it fails. Otherwise (without a mailer, cron would discard what chronic prints)
it is appended to <state dir>/cron.log.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass

from . import schedules

MAILERS = ("/usr/sbin/sendmail", "/usr/lib/sendmail")   # where Debian's cron looks for one
LOG_NAME = "cron.log"
# Vixie cron (Debian's) reads at most 999 characters of a command and drops the rest
# without a word: a longer line is refused here instead.
MAX_LINE = 999
HOST_PROGRAMS = ("python3", "git", "docker")   # what the tools run on the host
STANDARD_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


class CronError(ValueError):
    """The lines cannot be written for this repository (a path cron cannot carry)."""


@dataclass
class Line:
    kind: str
    name: str
    schedule: str
    text: str          # the crontab line


def markers(top: str) -> tuple[str, str]:
    return f"# BEGIN factory {top}", f"# END factory {top}"


def mail_works() -> bool:
    """Whether cron has a mailer to send a failed run's output with."""
    return bool(shutil.which("sendmail")) or any(os.access(p, os.X_OK) for p in MAILERS)


def chronic_path() -> str | None:
    """chronic, if output can go under it and reach a person by mail."""
    path = shutil.which("chronic")
    return path if path and mail_works() else None


def run_path(tool_dirs: list[str]) -> str:
    """The PATH a line gives its run: the tools' directories, the directories this process
    finds python3, git and docker in, then the standard ones. Not all of this PATH: cron
    reads only so much of a line."""
    dirs = list(tool_dirs) + [os.path.dirname(p) for p in map(shutil.which, HOST_PROGRAMS) if p]
    return os.pathsep.join(dict.fromkeys(dirs + list(STANDARD_PATH)))


def _cron_word(value: str, what: str) -> str:
    """`value` as one shell word on a crontab line. cron ends a line at a newline and turns
    an unescaped % into one, so control characters are refused and % is escaped."""
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise CronError(f"{what} {value!r} holds a control character (a newline, ...), which a "
                        "crontab line cannot carry; move it to a path without one")
    return shlex.quote(value).replace("%", "\\%")


def lines(cfg: dict, top: str, *, slot: str, sense: str, path: str, log: str, chronic: str | None,
          keep: dict[str, str] | None = None) -> list[Line]:
    """One crontab line per scheduled sensor and adversary of `cfg`, for the repository at
    `top`: `slot` and `sense` are the tools' absolute paths, `path` the PATH to give the
    run, `chronic` chronic's path (None: append to `log` instead), `keep` variables to set."""
    assign = " ".join(f"{k}={_cron_word(v, k)}" for k, v in {"PATH": path, **(keep or {})}.items())
    cd = f"cd {_cron_word(top, 'the repository path')}"
    out = []
    for kind, name, schedule in schedules.scheduled(cfg):
        run = f"{_cron_word(slot, 'factory-slot')} {kind} -- {_cron_word(sense, 'factory-sense')} {name} --file"
        if chronic:
            command = f"{cd} && {assign} {_cron_word(chronic, 'chronic')} {run}"
        else:
            command = f"{cd} && {assign} {run} >> {_cron_word(log, 'the log')} 2>&1"
        text = f"{schedule} {command}"
        if len(text) > MAX_LINE:
            raise CronError(f"the crontab line for {kind} {name} would be {len(text)} characters long, and cron "
                            f"reads no more than {MAX_LINE}: give the repository, factory or the FACTORY_* "
                            "variables set here shorter paths")
        out.append(Line(kind, name, schedule, text))
    return out


def block(top: str, entries: list[Line]) -> str | None:
    """The block to install for the repository at `top`; None when nothing is scheduled."""
    if not entries:
        return None
    _cron_word(top, "the repository path")  # the markers name it too
    begin, end = markers(top)
    comment = ("# factory's schedules for this repository, from its factory.yaml: written by\n"
               "# `factory cron install`, removed by `factory cron uninstall`. Edit factory.yaml, not\n"
               "# these lines: the next install writes them again.\n")
    return begin + "\n" + comment + "".join(e.text + "\n" for e in entries) + end + "\n"
