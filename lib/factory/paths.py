"""Where factory keeps its runtime files on the host, and the variables that move them.

Everything lives under the repository's common git dir (shared by every linked worktree,
so a worktree sees the same slots, runs and supervisor as the main checkout):

    <common git dir>/factory/supervisor.lock   the one supervisor per repository
    <common git dir>/factory/slots/            $FACTORY_SLOTS_DIR: flock slots
    <common git dir>/factory/runs/<run>/       $FACTORY_RUNS_DIR: one run's host-only files
    <common git dir>/factory/                  $FACTORY_STATE_DIR: supervisor log and status,
                                               agents' logs

None of it is needed to recover: git holds what must last. The supervisor's lock cannot be
moved by a variable, so that two supervisors can never run on one repository.
"""

from __future__ import annotations

import os


def factory_dir(repo) -> str:
    return os.path.join(repo.common_dir, "factory")


def state_dir(repo) -> str:
    return os.environ.get("FACTORY_STATE_DIR") or factory_dir(repo)


def slots_dir(repo) -> str:
    return os.environ.get("FACTORY_SLOTS_DIR") or os.path.join(factory_dir(repo), "slots")


def runs_dir(repo) -> str:
    return os.environ.get("FACTORY_RUNS_DIR") or os.path.join(factory_dir(repo), "runs")


def supervisor_lock(repo) -> str:
    return os.path.join(factory_dir(repo), "supervisor.lock")


def supervisor_status(repo) -> str:
    """What the running supervisor is waiting for, if anything (for `factory status`)."""
    return os.path.join(state_dir(repo), "supervisor.json")
