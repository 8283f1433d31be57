"""An agent's workspace on the host: where it lives, who owns it, what leaves it.

    RUNS/<run-id>/owner.json   host only: the spawn's pid, so a later spawn can reap it
    RUNS/<run-id>/ws/          mounted at /workspace, the only host path the agent sees
    RUNS/<run-id>/ws/repo/     the clone the agent works in (/workspace/repo)
    RUNS/<run-id>/ws/out/      where the harvest writes its bundle (/workspace/out)

RUNS is $FACTORY_RUNS_DIR, else <tmp>/factory-runs. After the agent has run, the host
reads exactly one thing from the workspace: the bundle, copied out as a regular file
(never through a link) before git looks at it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import time

MAX_BUNDLE_BYTES = 2 << 30
REAP_AFTER_S = 60  # a workspace younger than this may still be being set up


def runs_root() -> str:
    return os.environ.get("FACTORY_RUNS_DIR") or os.path.join(tempfile.gettempdir(), "factory-runs")


class WorkspaceError(Exception):
    pass


class Workspace:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.root = os.path.join(runs_root(), run_id)
        self.mount = os.path.join(self.root, "ws")
        self.repo = os.path.join(self.mount, "repo")
        self.out = os.path.join(self.mount, "out")

    def create(self, issue: str | None = None) -> "Workspace":
        os.makedirs(self.root, mode=0o700)
        with open(os.path.join(self.root, "owner.json"), "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "created": time.time(),
                       "issue": issue}, f)
        os.makedirs(self.out)
        return self

    def write_progress(self, progress: dict) -> None:
        """How far the run is (turns, tokens): read by `factory status` while it runs."""
        from .atomic import write_text
        write_text(os.path.join(self.root, "progress.json"), json.dumps(progress))

    def take_bundle(self) -> str | None:
        """Copy ws/out/result.bundle to a host-only path; None when the agent left none.
        The agent owns ws/out and could swap it, or the file, for a link to a host path:
        both are opened without following links (the file relative to the directory's
        fd), and only a regular file is taken."""
        nofollow = os.O_RDONLY | os.O_NOFOLLOW
        try:
            dir_fd = os.open(self.out, nofollow | os.O_DIRECTORY)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise WorkspaceError(f"the agent's out/ directory cannot be read safely: {e.strerror}") from e
        try:
            fd = os.open("result.bundle", nofollow | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise WorkspaceError(f"the agent's bundle cannot be read safely: {e.strerror}") from e
        finally:
            os.close(dir_fd)
        dst = os.path.join(self.root, "result.bundle")
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise WorkspaceError("the agent's bundle is not a regular file")
            if st.st_size > MAX_BUNDLE_BYTES:
                raise WorkspaceError(f"the agent's bundle is {st.st_size} bytes, over {MAX_BUNDLE_BYTES}")
            with open(dst, "wb") as out:
                shutil.copyfileobj(f, out)
        return dst

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)  # rmtree never follows links


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_owners() -> list[dict]:
    """owner.json of every workspace whose spawn is alive on this host: what runs now."""
    out = []
    root = runs_root()
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return out
    for run_id in entries:
        try:
            with open(os.path.join(root, run_id, "owner.json")) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            continue
        if owner.get("host") == socket.gethostname() and _pid_alive(int(owner.get("pid", 0))):
            try:
                with open(os.path.join(root, run_id, "progress.json")) as f:
                    owner["progress"] = json.load(f)
            except (OSError, ValueError):
                owner["progress"] = None
            out.append(dict(owner, run=run_id))
    return out


def reap() -> list[str]:
    """Remove workspaces whose spawn is gone (killed before it could clean up)."""
    root = runs_root()
    removed = []
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return removed
    for run_id in entries:
        path = os.path.join(root, run_id)
        try:
            with open(os.path.join(path, "owner.json")) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            try:
                if time.time() - os.lstat(path).st_mtime > REAP_AFTER_S:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(run_id)
            except FileNotFoundError:
                pass
            continue
        if owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", 0))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(run_id)
    return removed
