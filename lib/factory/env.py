"""factory's environment: every FACTORY_* variable it reads, and where its runtime files live.

One module, so that a variable is named once, documented once (VARIABLES, which the
README's table must list: a test checks) and read through one function.

Runtime files live under the repository's common git dir (shared by every linked
worktree, so a worktree sees the same slots, runs and supervisor as the main checkout):

    <common git dir>/factory/supervisor.lock   the one supervisor per repository
    <common git dir>/factory/slots/            $FACTORY_SLOTS_DIR: flock slots
    <common git dir>/factory/runs/<run>/       $FACTORY_RUNS_DIR: one run's host-only files
    <common git dir>/factory/                  $FACTORY_STATE_DIR: supervisor log, agents' logs

None of it is needed to recover: git holds what must last. The supervisor's lock cannot be
moved by a variable, so that two supervisors can never run on one repository.
"""

from __future__ import annotations

import os

# Every variable factory reads (FACTORY_SLOT* are set by factory-slot for its command;
# FACTORY_BASE and FACTORY_HEAD by factory for a check's command).
VARIABLES = {
    "FACTORY_REPO": "the repository the tools act on (default: the current directory's)",
    "FACTORY_CONFIG": "the config file (default: factory.yaml at the top of the work tree)",
    "FACTORY_ACTOR": "who is acting, in issue events (default: human:$USER)",
    "FACTORY_MODEL": "the model every agent uses, over model.name",
    "FACTORY_STATE_DIR": "the supervisor's log and agents' logs (default: <git dir>/factory)",
    "FACTORY_SLOTS_DIR": "the slot lock files (default: <git dir>/factory/slots)",
    "FACTORY_RUNS_DIR": "runs' host-only files (default: <git dir>/factory/runs)",
    "FACTORY_CPUS": "the CPUs leases may take, below the machine's",
    "FACTORY_MEMORY": "the memory leases may take, below the machine's (512m, 8g)",
    "FACTORY_SLOT": "set for factory-slot's command: the lease (kind.number)",
    "FACTORY_DEBIAN_MIRROR": "the Debian mirror an offline image build uses",
    "FACTORY_CRONTAB": "the crontab program factory cron reads and writes with (default: crontab)",
    "FACTORY_BASE": "set for a check's command, in its container: the commit of main it is judged against",
    "FACTORY_HEAD": "set for a check's command, in its container: the branch's commit",
}

# What a crontab line keeps of the environment `factory cron` ran in: the variables that
# pick the config, the runtime roots and the machine's share, so that cron runs what this
# shell would. Not FACTORY_REPO (the line cds into the repository), nor who acts, nor
# what factory sets for its children. Those naming a path are made absolute.
KEPT_BY_CRON = ("FACTORY_CONFIG", "FACTORY_STATE_DIR", "FACTORY_SLOTS_DIR", "FACTORY_RUNS_DIR",
                "FACTORY_CPUS", "FACTORY_MEMORY", "FACTORY_MODEL", "FACTORY_DEBIAN_MIRROR")
PATH_VARIABLES = ("FACTORY_CONFIG", "FACTORY_STATE_DIR", "FACTORY_SLOTS_DIR", "FACTORY_RUNS_DIR")


def kept_by_cron() -> dict[str, str]:
    """The KEPT_BY_CRON variables set here, paths absolute."""
    out = {}
    for name in KEPT_BY_CRON:
        value = get(name)
        if value:
            out[name] = os.path.abspath(value) if name in PATH_VARIABLES else value
    return out


# Variables factory sets, never reads: for the gate's checks, in their container.
SET_FOR_CHECKS = {
    "FACTORY_BASE": "set for the gate's checks: the commit of main the branch is merged into",
    "FACTORY_HEAD": "set for the gate's checks: the branch's head (HEAD is the merge result)",
}


def get(name: str, default: str | None = None) -> str | None:
    """A FACTORY_* variable's value ('' counts as unset); the name must be in VARIABLES."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a variable factory reads (add it to env.VARIABLES)")
    return os.environ.get(name) or default


def factory_dir(repo) -> str:
    return os.path.join(repo.common_dir, "factory")


def state_dir(repo) -> str:
    return get("FACTORY_STATE_DIR") or factory_dir(repo)


def slots_dir(repo) -> str:
    return get("FACTORY_SLOTS_DIR") or os.path.join(factory_dir(repo), "slots")


def runs_dir(repo) -> str:
    return get("FACTORY_RUNS_DIR") or os.path.join(factory_dir(repo), "runs")


def supervisor_lock(repo) -> str:
    return os.path.join(factory_dir(repo), "supervisor.lock")


def supervisor_status(repo) -> str:
    """What the running supervisor is waiting for, if anything (for `factory status`)."""
    return os.path.join(state_dir(repo), "supervisor.json")
