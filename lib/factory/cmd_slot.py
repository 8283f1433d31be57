"""factory-slot: hold a slot while a command runs (arguments, JSON out, exit codes)."""

from __future__ import annotations

import os
import shlex
import sys

import click

from .cli import CONTEXT_SETTINGS, BadInput, Failed, emit, load_config, open_repo, repo_option, run_main, say

TOOL = "factory-slot"
from .registry import KINDS
EXIT_CANNOT_FIT = 3
EXIT_NO_SLOT = 75  # EX_TEMPFAIL: try again later


def _slots():
    from .slots import Slots
    repo = open_repo(TOOL)
    cfg = load_config(TOOL, repo)
    from .env import slots_dir
    root = slots_dir(repo)
    return Slots(root, cfg)


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
Exit codes:
  N    CMD's own exit status (killed by signal N: as CMD would show, 128+N in a shell)
  2    usage or bad input
  {EXIT_CANNOT_FIT}    the request can never fit this machine, or the kind's quota is 0
  {EXIT_NO_SLOT}   --no-wait and no slot is free now
  126  CMD cannot be run; 127 CMD not found

\b
Examples:
  factory-slot worker -- factory-spawn < task.json
  factory-issue next --claim | factory-slot worker -- factory-spawn
  factory-slot sensor --no-wait -- pytest -q || echo busy
  factory-slot status | jq '.kinds.worker.used'
""")
@click.argument("kind", metavar="KIND|status")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="-- CMD [ARGS...]")
@click.option("--no-wait", is_flag=True, help=f"Exit {EXIT_NO_SLOT} at once when no slot is free.")
@click.option("-p", "--pretty", is_flag=True, help="status: indent the JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Say nothing while waiting.")
@repo_option
def cli(kind, command, no_wait, pretty, quiet):
    """Hold a slot of a kind while a command runs; or show the slots."""
    if kind == "status":
        if command:
            raise BadInput(TOOL, "status takes no command")
        emit(_slots().status(), pretty=pretty)
        return 0
    if kind not in KINDS:
        raise BadInput(TOOL, f"'{kind}' is not a kind of slot (worker, sensor, adversary, or: status)")
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise BadInput(TOOL, f"no command to run (try: factory-slot {kind} -- CMD ...)")
    from .slots import NoFit
    slots = _slots()
    try:
        got = slots.try_acquire(kind, shlex.join(command))
        if got is None and not no_wait:
            if not quiet:
                say(TOOL, f"waiting for a {kind} slot")
            got = slots.acquire(kind, shlex.join(command))
    except NoFit as e:
        raise Failed(TOOL, str(e), code=EXIT_CANNOT_FIT)
    if got is None:
        raise Failed(TOOL, f"no {kind} slot is free now", code=EXIT_NO_SLOT)
    lease, fds = got
    for fd in fds:
        os.set_inheritable(fd, True)  # the locks live on in CMD: exec keeps them
    env = dict(os.environ, **lease.env())
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        raise Failed(TOOL, f"'{command[0]}' not found", code=127)
    except OSError as e:
        raise Failed(TOOL, f"cannot run '{command[0]}': {e.strerror}", code=126)


def main() -> int:
    return run_main(cli, TOOL)


if __name__ == "__main__":
    sys.exit(main())
