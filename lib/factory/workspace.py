"""A run's files on the host: who runs it, how far it is, and the bundle it left.

    RUNS/<run-id>/owner.json      the spawn's pid and host, so a later spawn can reap it
    RUNS/<run-id>/progress.json   turns and tokens so far, for `factory status`
    RUNS/<run-id>/result.bundle   the agent's work, streamed out of the container

RUNS is env.runs_dir(repo). None of it is ever mounted into a container: the agent's
checkout lives on a tmpfs inside its container (see sandbox.py), so no file the host
keeps can be changed by an agent, and the host never runs git in a directory the agent
controlled. The bundle is written by the host from the exec's output stream.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

from .env import runs_dir

REAP_AFTER_S = 60  # a run directory younger than this may still be being set up


class WorkspaceError(Exception):
    pass


class Workspace:
    def __init__(self, repo, run_id: str):
        self.run_id = run_id
        self.root = os.path.join(runs_dir(repo), run_id)
        self.bundle = os.path.join(self.root, "result.bundle")

    def create(self, issue: str | None = None) -> "Workspace":
        os.makedirs(os.path.dirname(self.root), mode=0o700, exist_ok=True)
        os.makedirs(self.root, mode=0o700)
        from .atomic import write_text
        write_text(os.path.join(self.root, "owner.json"),
                   json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "created": time.time(),
                               "issue": issue}))
        return self

    def write_progress(self, progress: dict) -> None:
        """How far the run is (turns, tokens): read by `factory status` while it runs."""
        from .atomic import write_text
        write_text(os.path.join(self.root, "progress.json"), json.dumps(progress))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)  # rmtree never follows links


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owners(repo):
    root = runs_dir(repo)
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return
    for run_id in entries:
        path = os.path.join(root, run_id)
        try:
            with open(os.path.join(path, "owner.json")) as f:
                owner = json.load(f)
            if not isinstance(owner, dict):
                raise ValueError
        except (OSError, ValueError):
            owner = None
        yield run_id, path, owner


def _alive_here(owner: dict) -> bool:
    try:
        pid = int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return False
    return owner.get("host") == socket.gethostname() and _pid_alive(pid)


def live_owners(repo) -> list[dict]:
    """owner.json of every run of this repository whose spawn is alive on this host."""
    out = []
    for run_id, path, owner in _owners(repo):
        if owner is None or not _alive_here(owner):
            continue
        try:
            with open(os.path.join(path, "progress.json")) as f:
                owner["progress"] = json.load(f)
        except (OSError, ValueError):
            owner["progress"] = None
        out.append(dict(owner, run=run_id))
    return out


def reap(repo) -> list[str]:
    """Remove the run directories of this repository whose spawn is gone."""
    removed = []
    for run_id, path, owner in _owners(repo):
        if owner is None:
            try:
                if time.time() - os.lstat(path).st_mtime <= REAP_AFTER_S:
                    continue
            except FileNotFoundError:
                continue
        elif owner.get("host") != socket.gethostname() or _alive_here(owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(run_id)
    return removed
