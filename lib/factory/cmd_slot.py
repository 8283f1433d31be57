"""factory-slot: hold a slot while a command runs (arguments, JSON out, exit codes)."""

from __future__ import annotations

import os
import shlex
import sys

import click

from .cli import CONTEXT_SETTINGS, Failed, emit, repo_option, run_main, say
from .exits import CANNOT_RUN, NOT_FOUND, SLOT_BUSY, SLOT_CANNOT_FIT, SLOT_CONFIG, SLOT_USAGE

TOOL = "factory-slot"
from .registry import SLOT_KINDS  # noqa: E402


# factory-slot's own refusals never use 1 or 2: those are its command's (exits.py).
def _usage(message: str) -> Failed:
    return Failed(TOOL, message, code=SLOT_USAGE)


def _slots():
    from . import config
    from .gitstore import GitError, Repo
    from .env import slots_dir
    from .slots import Slots
    try:
        repo = Repo()
    except GitError as e:
        raise _usage(str(e))
    try:
        cfg = config.load(repo.work_tree() or repo.git_dir)
    except config.ConfigError as e:
        raise Failed(TOOL, f"{e}\n(fix factory.yaml; nothing was done)", code=SLOT_CONFIG)
    return Slots(slots_dir(repo), cfg)


@click.command(context_settings=dict(CONTEXT_SETTINGS, ignore_unknown_options=True), epilog=f"""
\b
factory-slot KIND -- CMD [ARGS...] waits for a free slot of KIND (worker, sensor,
adversary) within the kind's quota and the total (factory.yaml `slots`), and for the
kind's CPU and memory request (`resources`) to fit beside the leases held, then runs
CMD in its place (exec): stdin, stdout and the exit code are CMD's own. The slot is a
flock the kernel releases when CMD and every child it leaves exit, however they exit,
so no slot ever leaks. CMD's environment carries the lease: FACTORY_SLOT (e.g.
worker.0), FACTORY_SLOT_KIND, FACTORY_SLOT_NUMBER, FACTORY_SLOT_CPUS, FACTORY_SLOT_MEMORY.
The machine's capacity is its CPUs and memory unless FACTORY_CPUS / FACTORY_MEMORY say less.

\b
factory-slot status prints the slots as one JSON object: total and per kind (size,
used, leases with pid, command, since, cpus, memory) and the resources in use.

\b
Exit codes: factory-slot's own (sysexits.h's) lie outside what CMD returns, so that a
caller can tell "the slot refused" from "CMD ended".
  N    CMD's own exit status, whatever it is (killed by signal N: 128+N in a shell)
  {SLOT_USAGE}   usage: not a kind, no command, not in a git repository (EX_USAGE)
  {SLOT_CANNOT_FIT}   the kind's request can never fit this machine, or its quota is 0: waiting
       would never end; the message names the resource, the request and the limit
       (EX_UNAVAILABLE)
  {SLOT_BUSY}   --no-wait and no slot is free now (EX_TEMPFAIL)
  {SLOT_CONFIG}   factory.yaml, FACTORY_CPUS or FACTORY_MEMORY is invalid (EX_CONFIG)
  {CANNOT_RUN}  CMD cannot be run; {NOT_FOUND} CMD not found

\b
Examples:
  factory-slot worker -- factory-spawn < task.json
  factory-issue next --claim | factory-slot worker -- factory-spawn
  factory-slot sensor --no-wait -- pytest -q || echo busy
  factory-slot status | jq '.kinds.worker.used'
""")
@click.argument("kind", metavar="KIND|status")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="-- CMD [ARGS...]")
@click.option("--no-wait", is_flag=True, help=f"Exit {SLOT_BUSY} at once when no slot is free.")
@click.option("-p", "--pretty", is_flag=True, help="status: indent the JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Say nothing while waiting.")
@repo_option
def cli(kind, command, no_wait, pretty, quiet):
    """Hold a slot of a kind while a command runs; or show the slots."""
    if kind == "status":
        if command:
            raise _usage("status takes no command")
        from .slots import SlotError
        slots = _slots()
        try:
            emit(slots.status(), pretty=pretty)
        except SlotError as e:
            raise Failed(TOOL, str(e), code=SLOT_CONFIG)
        return 0
    if kind not in SLOT_KINDS:
        raise _usage(f"'{kind}' is not a kind of slot ({', '.join(SLOT_KINDS)}, or: status)")
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise _usage(f"no command to run (try: factory-slot {kind} -- CMD ...)")
    from .slots import NoFit, SlotError
    slots = _slots()
    try:
        got = slots.try_acquire(kind, shlex.join(command))
        if got is None and not no_wait:
            if not quiet:
                say(TOOL, f"waiting for a {kind} slot")
            got = slots.acquire(kind, shlex.join(command))
    except NoFit as e:
        raise Failed(TOOL, str(e), code=SLOT_CANNOT_FIT)
    except SlotError as e:
        raise Failed(TOOL, str(e), code=SLOT_CONFIG)
    if got is None:
        raise Failed(TOOL, f"no {kind} slot is free now", code=SLOT_BUSY)
    lease, fds = got
    for fd in fds:
        os.set_inheritable(fd, True)  # the locks live on in CMD: exec keeps them
    env = dict(os.environ, **lease.env())
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        raise Failed(TOOL, f"'{command[0]}' not found", code=NOT_FOUND)
    except OSError as e:
        raise Failed(TOOL, f"cannot run '{command[0]}': {e.strerror}", code=CANNOT_RUN)


def main() -> int:
    return run_main(cli, TOOL, usage_code=SLOT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
