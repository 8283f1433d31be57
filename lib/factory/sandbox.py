"""The only caller of Docker: the engine, agents' containers, exec, cleanup, and the
Docker side of image builds (images.py decides what to build; it builds through here).

One Sandbox is one container for one agent, hardened by default and with no switch to
soften it: no network, all capabilities dropped, no new privileges, read-only root, a
non-root user, an init that reaps zombies, pids/memory/CPU limits. Its only writable
places are two tmpfs mounts, /workspace (the agent's checkout, `disk` bytes) and /tmp,
both counted against the memory limit, so an agent can fill neither the host's disk nor
any host file. The repository's object store is bind-mounted read-only at /factory/objects
(the checkout borrows its objects from there, as git alternates): the kernel refuses every
write to it, whoever owns the repository. Never the Docker socket, never the host's
environment.

The deadline is the container's own: its main process is `sleep DEADLINE_S` and it is
created with auto_remove, so when the deadline passes the container exits and the daemon
removes it, even if factory died long before. `reap` removes earlier what a dead owner
left behind (the label factory.owner_pid names the owner).

Agents' commands run through `Sandbox.exec` (docker's exec API, never a shell on the
host): under an in-container timeout, output merged and bounded. Files go in and out
through exec too (base64), so they work alike on the tmpfs and the bind mount.

The docker SDK is imported on first use, so tools that never touch Docker (and every
--help) do not pay for it.
"""

from __future__ import annotations

import base64
import os
import posixpath
import re
import secrets
import select
import socket
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, asdict

from .config import parse_size

AGENT_UID = 1000          # the agent's uid when factory runs as root
WORKSPACE = "/workspace"
OBJECTS = "/factory/objects"   # the repository's objects, read-only
TMP = "/tmp"
WRITABLE = (WORKSPACE, TMP)  # the only paths write_file/read_file accept
KILL_GRACE_S = 2             # timeout -k: SIGTERM first, SIGKILL this much later
HOST_SLACK_S = 10            # how much longer than the command's timeout the host waits
EXIT_GRACE_S = 0.5           # output still read after the command exited (see _pump)
CHUNK_B64 = 96 * 1024        # one argv string < MAX_ARG_STRLEN (128 KiB); a multiple of 4
CHUNKS_PER_EXEC = 8          # ~768 KiB of argv per exec, well under ARG_MAX (2 MiB)
READ_LIMIT = 64 << 20        # read_file refuses larger files
# How every exec runs: under coreutils timeout, which puts the command in a process group
# of its own and on timeout signals that whole group (TERM, KILL KILL_GRACE_S later).
# When the command ends, whatever it left behind in this exec's session is killed too:
# first its process group, then, swept from /proc, every process of the session (a nested
# `timeout` or any setpgid leaves the group, not the session). Only builtins run after
# the command (read, kill, globbing), so the sweep works even when a fork bomb has used
# up the pids limit, and it repeats until a pass finds nothing. Nothing outlives its exec
# but what the command detached with `setsid`. $1 grace, $2 timeout, $3... argv.
# MERGED sends stderr into stdout inside the container: docker carries the two streams
# apart and their order across the two is lost on the way.
_RUNNER = r"""timeout -k "$1" "$2" "${{@:3}}" {redirect}& p=$!
wait "$p" 2>/dev/null; rc=$?
kill -KILL -- "-$p" 2>/dev/null
read -r l < /proc/$$/stat; l=${{l##*) }}; a=($l); sid=${{a[3]}}
for _ in 1 2 3 4 5 6 7 8 9 10; do
  found=
  for d in /proc/[0-9]*; do
    q=${{d#/proc/}}; [ "$q" = "$$" ] && continue
    {{ read -r l < "$d/stat"; }} 2>/dev/null || continue
    l=${{l##*) }}; a=($l)
    [ "${{a[3]}}" = "$sid" ] && [ "${{a[0]}}" != Z ] && kill -KILL "$q" 2>/dev/null && found=1
  done
  [ -z "$found" ] && break
done
exit "$rc"
"""
RUNNER = _RUNNER.format(redirect="")
MERGED_RUNNER = _RUNNER.format(redirect="2>&1 ")
BASE_ENV = {
    "HOME": TMP,  # the root is read-only; git and most tools need a writable HOME
    "LANG": "C.UTF-8",
    "GIT_AUTHOR_NAME": "factory agent",
    "GIT_AUTHOR_EMAIL": "agent@factory.invalid",
    "GIT_COMMITTER_NAME": "factory agent",
    "GIT_COMMITTER_EMAIL": "agent@factory.invalid",
    # No terminal and no stdin: nothing may wait for a person.
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_EDITOR": "true",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
}


class EngineUnavailable(Exception):
    """No Docker engine answers; the message says how to start one."""


class EngineLost(EngineUnavailable):
    """The engine stopped answering in the middle of a container's life: a call on it
    could not reach the engine at all (its socket gone, the connection refused or cut)."""


class SandboxError(Exception):
    """Docker refused or failed an operation; the message says which and why."""


class SandboxGone(SandboxError):
    """The container no longer exists (removed, or its deadline passed)."""


def client(timeout: int = 10):
    import docker
    from docker.errors import DockerException
    try:
        c = docker.from_env(timeout=timeout)
        c.ping()
        return c
    except DockerException as e:
        raise EngineUnavailable(f"no Docker engine answers ({e}); start one "
                                "(e.g. `dockerd &`, or scripts/ensure-docker) or set DOCKER_HOST") from e


def engine_info() -> dict:
    """{"ok": True, "version", "storage_driver", "cgroup"} or {"ok": False, "error"}."""
    try:
        c = client(timeout=5)
        info = c.info()
        return {"ok": True, "version": c.version().get("Version"),
                "storage_driver": info.get("Driver"), "cgroup": info.get("CgroupVersion")}
    except EngineUnavailable as e:
        return {"ok": False, "error": str(e)}


def _errors():
    import docker.errors
    return docker.errors


# -- results ---------------------------------------------------------------------------

@dataclass
class ExecResult:
    exit_code: int | None  # the command's status; 124 or 137 when its timeout stopped it
    output: str            # stdout and stderr as written (2>&1 inside), maybe truncated
    timed_out: bool
    truncated: bool
    duration: float        # seconds, measured on the host

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StreamResult:
    exit_code: int | None  # None when the host gave up waiting
    stderr: str            # bounded
    bytes: int             # how many bytes of stdout were written to the file
    over: bool             # stdout was longer than allowed; the file holds only its start
    duration: float


@dataclass
class State:
    status: str            # running | exited | gone (or docker's created, paused, removing, dead)
    exit_code: int | None
    oom_killed: bool

    def to_dict(self) -> dict:
        return asdict(self)


class HeadTail:
    """Keeps the first `limit // 2` and the last `limit - limit // 2` bytes of a stream
    of any length, in memory bounded by about twice the limit."""

    def __init__(self, limit: int):
        self.limit = max(int(limit), 0)
        self.half = self.limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        take = min(len(data), self.half - len(self.head))
        if take > 0:
            self.head += data[:take]
            data = data[take:]
        self.tail += data
        keep = self.limit - self.half
        if len(self.tail) > 2 * keep + 65536:  # trim now and then, not on every chunk
            del self.tail[:len(self.tail) - keep]

    def result(self) -> tuple[str, bool]:
        """(text, truncated): everything when it fits, else head, a marker line, tail."""
        if self.total <= self.limit:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace"), False
        keep = self.limit - self.half
        tail = bytes(self.tail[len(self.tail) - keep:]) if keep else b""
        cut = self.total - len(self.head) - len(tail)
        marker = (f"\n[... {cut} bytes cut: the output was {self.total} bytes; "
                  f"kept the first {len(self.head)} and the last {len(tail)} ...]\n")
        return self.head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace"), True


# -- paths -----------------------------------------------------------------------------

def agent_user() -> str:
    """Who the agent is inside its container. Run by a normal user, the agent is that user
    (its files on the tmpfs are then plainly the user's, and it can read the repository's
    objects whatever the user's umask); run by root, uid 1000, never root. No host file is
    writable from the container either way: the only host path it sees is read-only."""
    uid = os.geteuid()
    return f"{AGENT_UID}:{AGENT_UID}" if uid == 0 else f"{uid}:{os.getegid()}"


def container_path(path: str) -> str:
    """An absolute, normalized path under /workspace or /tmp (relative paths are taken
    from /workspace); anything else raises ValueError. A policy against mistakes, not
    the security boundary: the container is."""
    full = posixpath.normpath(posixpath.join(WORKSPACE, path))
    if not any(full.startswith(root + "/") for root in WRITABLE):
        raise ValueError(f"path '{path}' is outside {' and '.join(WRITABLE)}")
    return full


# -- the container ---------------------------------------------------------------------

def _size(v, what: str) -> int:
    n = parse_size(v)
    if n is None:
        raise ValueError(f"{what}: {v!r} is not a size such as 512m or 2g")
    return n


class Sandbox:
    """One agent's container. `Sandbox.start` creates it; `Sandbox(id)` addresses one
    that exists (the supervisor finds them again by their labels)."""

    def __init__(self, container_id: str, name: str | None = None, labels: dict | None = None):
        self.id = container_id
        self.name = name
        self.labels = dict(labels or {})
        self._client = None
        # Set once a call on this container could not reach the engine. Whether the engine
        # answers again by the time the run ends does not undo it: the run was cut by the
        # engine, not by its task (spawn.py judges a run's `infra` by it).
        self.engine_lost = False

    def __repr__(self):
        return f"Sandbox({self.id[:12]!r}, name={self.name!r})"

    @property
    def docker(self):
        if self._client is None:
            try:
                self._client = client(timeout=30)
            except EngineUnavailable:
                self.engine_lost = True
                raise
        return self._client

    @contextmanager
    def _engine(self):
        """Docker calls on this container: one that cannot reach the engine raises
        EngineLost (docker-py lets requests' ConnectionError through, which is no
        DockerException) and notes it in engine_lost."""
        import requests
        try:
            yield
        except requests.exceptions.ConnectionError as e:
            self.engine_lost = True
            raise EngineLost(f"the Docker engine stopped answering ({e})") from e

    @classmethod
    def start(cls, image: str, *, labels: dict, cpus: float, memory: str | int, pids: int,
              tmp_size: str | int, disk: str | int, deadline_s: int, objects: str | None = None,
              name: str | None = None, env: dict | None = None, runtime: str | None = None) -> "Sandbox":
        """Create and start the hardened container.

        `objects`: a host directory (a repository's object store) mounted read-only at
        /factory/objects; `disk`: the size of the /workspace tmpfs. Labels: always
        factory=1 and factory.deadline (epoch seconds); factory.owner_pid (this process)
        and factory.host default where `labels` does not give them. `env` adds to
        BASE_ENV; nothing of the host's environment is passed. `runtime`: the OCI runtime
        as the engine names it (runc, runsc); None: the engine's default.
        """
        if deadline_s < 1:
            raise ValueError(f"deadline_s is {deadline_s}; it must be at least 1")
        if objects is not None and not os.path.isdir(objects):
            raise SandboxError(f"'{objects}' is not a directory; it cannot be mounted at {OBJECTS}")
        deadline = int(time.time()) + int(deadline_s)
        all_labels = {"factory.owner_pid": str(os.getpid()), "factory.host": socket.gethostname()}
        all_labels.update({str(k): str(v) for k, v in labels.items()})
        all_labels.update({"factory": "1", "factory.deadline": str(deadline)})
        mem = _size(memory, "memory")
        user = agent_user()
        uid, gid = user.split(":")
        sb = cls("", name=name, labels=all_labels)
        from docker.types import Mount
        errors = _errors()
        mounts = [Mount(target=OBJECTS, source=os.path.abspath(objects), type="bind", read_only=True)] if objects else []
        try:
            with sb._engine():
                container = sb.docker.containers.create(
                    image,
                    # The deadline: when sleep ends the container exits and auto_remove removes it.
                    entrypoint=["sleep"], command=[str(int(deadline_s))],
                    name=name, labels=all_labels, user=user, working_dir=WORKSPACE,
                    environment={**BASE_ENV, **(env or {})},
                    network_mode="none", cap_drop=["ALL"], security_opt=["no-new-privileges"],
                    read_only=True, init=True, auto_remove=True,
                    # exec allowed on both: agents run scripts and tests there, and noexec would
                    # stop nothing that `bash script` does not allow anyway.
                    tmpfs={TMP: f"rw,nosuid,nodev,exec,size={_size(tmp_size, 'tmp_size')},mode=1777",
                           WORKSPACE: f"rw,nosuid,nodev,exec,size={_size(disk, 'disk')},mode=0755,uid={uid},gid={gid}"},
                    mounts=mounts,
                    pids_limit=int(pids), mem_limit=mem, memswap_limit=mem,  # no swap on top
                    nano_cpus=int(float(cpus) * 1e9), runtime=runtime,
                )
        except errors.ImageNotFound as e:
            raise SandboxError(f"no image '{image}' (build it: factory image build)") from e
        except errors.APIError as e:
            raise SandboxError(runtime_hint(runtime, e, sb.docker)
                               or f"cannot create a container from '{image}': {e.explanation or e}") from e
        sb.id, sb.name = container.id, container.name
        try:
            with sb._engine():
                container.start()
        except errors.APIError as e:
            sb.remove()  # created but never started: auto_remove would never fire
            raise SandboxError(runtime_hint(runtime, e, sb.docker)
                               or f"cannot start container from '{image}': {e.explanation or e}") from e
        return sb

    # -- life ----------------------------------------------------------------------

    def state(self) -> State:
        errors = _errors()
        try:
            with self._engine():
                st = self.docker.api.inspect_container(self.id)["State"]
        except errors.NotFound:
            return State("gone", None, False)
        status = st.get("Status") or "unknown"
        code = st.get("ExitCode") if status in ("exited", "dead") else None
        return State(status, code, bool(st.get("OOMKilled")))

    def alive(self) -> bool:
        return self.state().status == "running"

    def remove(self, wait: bool = True) -> None:
        """Kill and remove the container; fine if it is gone already or going. `wait`:
        return only once the engine says it is gone."""
        if not self.id:
            return
        errors = _errors()
        try:
            with self._engine():
                self.docker.api.remove_container(self.id, force=True)
        except errors.NotFound:
            pass
        except errors.APIError as e:
            # auto_remove may already be removing it ("removal ... already in progress")
            if e.status_code != 409:
                raise SandboxError(f"cannot remove container {self.id[:12]}: {e.explanation or e}") from e
        if not wait:
            return
        for _ in range(50):  # wait until it really is gone, so callers may rely on it
            if self.state().status == "gone":
                return
            time.sleep(0.1)

    # -- exec ----------------------------------------------------------------------

    def exec(self, command: str, *, timeout: float, workdir: str = WORKSPACE,
             env: dict | None = None, max_output: int = 30000) -> ExecResult:
        """Run `bash -c COMMAND` (not a login shell) as the agent in `workdir`, under
        `timeout -k 2 TIMEOUT` inside the container, so a runaway is killed there even if
        the host stops waiting (the host waits TIMEOUT + 12 s at most). When it ends, what
        it left running in the background is killed (see RUNNER; `setsid` escapes that).
        stdout and stderr are merged as written; output over max_output bytes keeps its
        head and tail around a marker line saying how many bytes were cut. timed_out is
        True when the timeout stopped the command: exit_code 124, or 137 when it needed
        SIGKILL. 137 without timed_out is a kill, usually the OOM killer (see oom_kills);
        125/126 means the command could not even start (e.g. the pids limit is full).
        Raises SandboxGone when the container is gone or stops meanwhile."""
        sink = HeadTail(max_output)
        code, duration, host_gave_up = self._run(
            ["bash", "-c", command], timeout=timeout, workdir=workdir, env=env, merge=True,
            on_output=lambda stream, data: sink.add(data))
        output, truncated = sink.result()
        if host_gave_up:
            output += f"\n[factory: stopped waiting after {duration:.0f} s]\n"
            return ExecResult(124, output, True, truncated, duration)
        # A command may itself exit 124/137 (or be OOM-killed: 137); only one that ran
        # its whole timeout counts as timed out.
        timed_out = code in (124, 137) and duration >= timeout * 0.98
        return ExecResult(code, output, timed_out, truncated, duration)

    def exec_to_file(self, command: str, dest: str, *, max_bytes: int, timeout: float,
                     workdir: str = WORKSPACE, env: dict | None = None) -> StreamResult:
        """Run `bash -c COMMAND` and write its stdout, as bytes, to the host file `dest`
        (created; at most max_bytes of it: past that the rest is dropped and `over` is
        set). stderr is kept, bounded, for messages. Nothing in the container decides
        where on the host the bytes go."""
        err = HeadTail(8192)
        written = 0
        over = False
        with open(dest, "wb") as f:
            def take(stream, data):
                nonlocal written, over
                if stream != 1:
                    err.add(data)
                    return
                room = max_bytes - written
                if len(data) > room:
                    over = True
                    data = data[:max(room, 0)]
                f.write(data)
                written += len(data)
            code, duration, gave_up = self._run(["bash", "-c", command], timeout=timeout, workdir=workdir,
                                                env=env, on_output=take)
        return StreamResult(None if gave_up else code, err.result()[0], written, over, duration)

    def _run(self, argv: list[str], *, timeout: float, workdir: str = WORKSPACE, env: dict | None = None,
             merge: bool = False, on_output=None) -> tuple[int | None, float, bool]:
        """(exit code, seconds, host gave up) of argv under the in-container timeout.
        Raises SandboxGone when the container is gone or dies (its deadline) meanwhile."""
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout is {timeout!r}; it must be more than 0 seconds")
        errors = _errors()
        api = self.docker.api
        cmd = ["bash", "-c", MERGED_RUNNER if merge else RUNNER, "factory-exec",
               str(KILL_GRACE_S), f"{float(timeout):.3f}"] + argv
        started = time.monotonic()
        try:
            with self._engine():
                exec_id = api.exec_create(self.id, cmd, stdout=True, stderr=True, stdin=False, tty=False,
                                          user=agent_user(), workdir=workdir,
                                          environment={str(k): str(v) for k, v in (env or {}).items()})["Id"]
                sock = api.exec_start(exec_id, socket=True)
                try:
                    finished = _pump(sock, on_output or (lambda s, d: None),
                                     deadline=started + timeout + KILL_GRACE_S + HOST_SLACK_S,
                                     exited=lambda: _exec_exited(api, exec_id))
                finally:
                    sock.close()
                duration = time.monotonic() - started
                code = _exec_exit_code(api, exec_id) if finished else None
        except errors.APIError as e:
            self._raise_if_gone(e)
            raise SandboxError(f"exec failed in {self.id[:12]}: {e.explanation or e}") from e
        if code in (None, 137) and self._dying():
            self._raise_if_gone(None, wait=True)
        return code, duration, not finished

    def _dying(self) -> bool:
        # When the container stops, its execs end as if SIGKILLed (137) while docker may
        # still say "running" for a moment; the deadline tells which it was.
        deadline = self.labels.get("factory.deadline")
        if deadline and deadline.isdigit():
            return time.time() >= int(deadline)
        return self.state().status != "running"

    def _raise_if_gone(self, cause, wait: bool = False) -> None:
        status = self.state().status
        for _ in range(20 if wait else 0):
            if status != "running":
                break
            time.sleep(0.05)
            status = self.state().status
        if status != "running" or wait:
            raise SandboxGone(f"container {self.id[:12]} has stopped (now: {status}); it was removed "
                              "or its deadline passed") from cause

    def oom_kills(self) -> int | None:
        """How many processes the kernel's OOM killer has killed in this container so
        far (the memory cgroup's oom_kill counter), None where it cannot be read. Docker's
        State.OOMKilled only tells about the main process; this counts every exec's."""
        r = self.exec("cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null "
                      "|| cat /sys/fs/cgroup/memory.events", timeout=10)
        m = re.search(r"^oom_kill (\d+)$", r.output, re.M)
        return int(m.group(1)) if m else None

    # -- files ---------------------------------------------------------------------

    def write_file(self, path: str, data: bytes, *, timeout: float = 60) -> str:
        """Write bytes to a file under /workspace or /tmp (parents created, an existing
        file's mode kept), atomically: into a temp file beside it, then renamed. Goes
        through exec as base64 argv chunks, so it works on tmpfs and on the bind mount
        alike and the file belongs to the agent's user. Returns the container path."""
        full = container_path(path)
        tmp = f"{full}.factory-{secrets.token_hex(4)}.tmp"
        b64 = base64.b64encode(data).decode()
        chunks = [b64[i:i + CHUNK_B64] for i in range(0, len(b64), CHUNK_B64)] or [""]
        groups = [chunks[i:i + CHUNKS_PER_EXEC] for i in range(0, len(chunks), CHUNKS_PER_EXEC)]
        try:
            for n, group in enumerate(groups):
                script = ['p="$1" t="$2"; shift 2']
                if n == 0:
                    script.append('mkdir -p -- "$(dirname -- "$p")" && : > "$t" || exit 1')
                script.append('printf %s "$@" | base64 -d >> "$t" || exit 1')
                if n == len(groups) - 1:
                    script.append('{ [ ! -e "$p" ] || chmod --reference="$p" -- "$t"; } && mv -f -- "$t" "$p"')
                out = bytearray()
                code, _, gave_up = self._run(["bash", "-c", "\n".join(script), "write_file", full, tmp] + group,
                                             timeout=timeout, on_output=lambda s, d: out.extend(d))
                if gave_up or code != 0:
                    why = out.decode(errors="replace").strip() or f"exit {code}"
                    raise SandboxError(f"cannot write '{full}': {why}")
        except BaseException:
            try:
                self._run(["rm", "-f", "--", tmp], timeout=10)
            except (SandboxError, EngineUnavailable):
                pass
            raise
        return full

    def read_file(self, path: str, *, max_bytes: int = READ_LIMIT, timeout: float = 60) -> bytes:
        """The bytes of a file under /workspace or /tmp. FileNotFoundError when there is
        none; SandboxError when it is larger than max_bytes or cannot be read."""
        full = container_path(path)
        # wc, not stat: gVisor's statx (Debian's runsc) refuses coreutils' stat; wc fstats.
        script = ('[ -f "$1" ] || { echo "not a file" >&2; exit 66; }; '
                  '[ "$(wc -c < "$1")" -le "$2" ] || { echo "larger than $2 bytes" >&2; exit 67; }; '
                  'base64 -w0 -- "$1"')
        out, err = bytearray(), bytearray()

        def collect(stream, data):
            (out if stream == 1 else err).extend(data)

        code, _, gave_up = self._run(["bash", "-c", script, "read_file", full, str(int(max_bytes))],
                                     timeout=timeout, on_output=collect)
        if code == 66:
            raise FileNotFoundError(f"no file '{full}' in container {self.id[:12]}")
        if gave_up or code != 0:
            raise SandboxError(f"cannot read '{full}': {err.decode(errors='replace').strip() or f'exit {code}'}")
        return base64.b64decode(bytes(out))


# -- runtimes --------------------------------------------------------------------------

RUNSC_ENTRY = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}
_RELOAD = "then reload the engine (systemctl reload docker, or kill -HUP the dockerd process)"


def runtime_hint(runtime: str | None, error, docker=None) -> str | None:
    """What to tell the user when the engine refused a container because of its runtime
    (the runtime is unknown to it, or runsc is registered without its no-network mode);
    None for any other error."""
    import json
    msg = str(getattr(error, "explanation", None) or error)
    if not runtime:
        return None
    if re.search(r"unknown runtime|unknown or invalid runtime|invalid runtime name", msg, re.I):
        known = ""
        try:
            known = f" (it knows: {', '.join(sorted(docker.info().get('Runtimes') or {}))})" if docker else ""
        except Exception:  # only a hint's detail: the error itself must still come through
            pass
        how = (f"./setup --runsc registers it with the default engine; or add "
               f"{json.dumps({'runtimes': RUNSC_ENTRY})} to the engine's daemon.json "
               f"(/etc/docker/daemon.json), {_RELOAD}") if runtime == "runsc" else (
               f"add it under \"runtimes\" in the engine's daemon.json (/etc/docker/daemon.json), "
               f"{_RELOAD}; or pick another sandbox.runtime in factory.yaml")
        return f"the Docker engine knows no runtime '{runtime}'{known} (sandbox.runtime in factory.yaml): {how}"
    if "network enabled in root network namespace" in msg:
        return (f"runtime '{runtime}' cannot run a container without a network unless gVisor's own "
                f"no-network mode is on: register it with \"runtimeArgs\": [\"--network=none\"] "
                f"({json.dumps({'runtimes': RUNSC_ENTRY})} in the engine's daemon.json, or ./setup --runsc), "
                f"{_RELOAD}")
    return None


# -- exec plumbing ---------------------------------------------------------------------

def _exec_exited(api, exec_id) -> bool:
    from docker.errors import NotFound
    try:
        return not api.exec_inspect(exec_id).get("Running", True)
    except NotFound:  # the container went, and its execs with it
        return True


def _exec_exit_code(api, exec_id) -> int | None:
    # The stream can end a moment before the daemon records the exit.
    for _ in range(50):
        info = api.exec_inspect(exec_id)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return info["ExitCode"]
        time.sleep(0.05)
    return None


def _pump(sock, on_output, *, deadline: float, exited) -> bool:
    """Read docker's multiplexed exec stream (8-byte header: stream, 0, 0, 0, size BE32)
    into on_output(stream, data) until it ends (True) or the deadline passes (False).

    A background process the command left running (`server &`) keeps the stream open
    after the command ended; so while the stream is quiet the exec is polled, and once
    it has exited, output is read for EXIT_GRACE_S more and then left."""
    raw = getattr(sock, "_sock", sock)
    fd = raw.fileno()
    pending = bytearray()
    exited_at = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            return False
        if exited_at is not None and now - exited_at > EXIT_GRACE_S:
            return True
        ready, _, _ = select.select([fd], [], [], min(0.5, deadline - now))
        if not ready:
            if exited_at is None and exited():
                exited_at = time.monotonic()
            continue
        try:
            chunk = raw.recv(65536)
        except (BlockingIOError, InterruptedError, socket.timeout):
            continue
        except OSError:
            return True
        if not chunk:
            return True
        pending += chunk
        while len(pending) >= 8:
            stream, size = struct.unpack(">BxxxL", pending[:8])
            if len(pending) < 8 + size:
                break
            on_output(stream, bytes(pending[8:8 + size]))
            del pending[:8 + size]


# -- finding and reaping ---------------------------------------------------------------

def _label_filters(labels: dict) -> list[str]:
    return ["factory=1"] + [k if v is None else f"{k}={v}" for k, v in labels.items() if k != "factory"]


def list_containers(labels: dict | None = None, **label_filters) -> list[dict]:
    """Factory's containers (label factory=1), running or not, narrowed by labels
    ({"factory.run": "abc"}; a value of None means the label is present with any
    value). Each: {"id", "name", "status", "image", "labels"}."""
    wanted = {**(labels or {}), **label_filters}
    found = client().api.containers(all=True, filters={"label": _label_filters(wanted)})
    return [{"id": c["Id"], "name": (c.get("Names") or ["/"])[0].lstrip("/"), "status": c.get("State"),
             "image": c.get("Image"), "labels": c.get("Labels") or {}} for c in found]


def owner_alive(labels: dict) -> bool:
    """Whether the process named by factory.owner_pid still runs on this host. A
    container of another host (factory.host) is not ours to judge: alive. A missing or
    bad pid: gone. (A reused pid keeps a container until its deadline, no longer.)"""
    host = labels.get("factory.host")
    if host and host != socket.gethostname():
        return True
    try:
        pid = int(labels.get("factory.owner_pid", ""))
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def reap(owner_alive=owner_alive, filters: dict | None = None) -> list[str]:
    """Remove factory's containers whose owner is gone; return their ids."""
    removed = []
    for c in list_containers(filters):
        if not owner_alive(c["labels"]):
            Sandbox(c["id"], c["name"], c["labels"]).remove()
            removed.append(c["id"])
    return removed


# -- images: the Docker side of images.py ----------------------------------------------

def image_info(ref: str) -> dict | None:
    """{"id", "created", "tags", "labels"} of a local image, or None."""
    errors = _errors()
    try:
        a = client().api.inspect_image(ref)
    except errors.ImageNotFound:
        return None
    except errors.APIError as e:
        if e.status_code == 404:
            return None
        raise SandboxError(f"cannot inspect image '{ref}': {e.explanation or e}") from e
    return {"id": a["Id"], "created": a.get("Created"), "tags": a.get("RepoTags") or [],
            "labels": (a.get("Config") or {}).get("Labels") or {}}


def images_labelled(key: str, value: str) -> list[str]:
    """Ids of local images with the label key=value, oldest first (an image built FROM
    another inherits its labels; the original is the older one)."""
    found = client().api.images(filters={"label": f"{key}={value}"})
    return [i["Id"] for i in sorted(found, key=lambda i: i.get("Created", 0))]


def tag_image(image_id: str, repository: str, tag: str) -> None:
    if not client().api.tag(image_id, repository, tag, force=True):
        raise SandboxError(f"cannot tag {image_id[:19]} as {repository}:{tag}")


def remove_image(ref: str) -> None:
    errors = _errors()
    try:
        client().api.remove_image(ref, force=True)
    except errors.ImageNotFound:
        pass


def pull_image(ref: str) -> None:
    errors = _errors()
    try:
        client(timeout=600).api.pull(ref)  # the SDK splits NAME:TAG; no tag means latest
    except errors.APIError as e:
        raise SandboxError(e.explanation or str(e)) from e


def import_rootfs(tarball: str, tag: str, changes: list[str]) -> str:
    """`docker import` of a rootfs tarball with Dockerfile `changes`; the image id."""
    errors = _errors()
    repository, _, t = tag.rpartition(":")
    try:
        client(timeout=600).api.import_image_from_file(tarball, repository=repository, tag=t, changes=changes)
    except errors.APIError as e:
        raise SandboxError(e.explanation or str(e)) from e
    info = image_info(tag)
    if not info:
        raise SandboxError(f"docker import reported success but there is no image '{tag}'")
    return info["id"]


def build_image(*, tag: str, labels: dict, context: str | None = None, dockerfile: str | None = None,
                dockerfile_text: str | None = None, log=None) -> str:
    """`docker build` of a directory (with a Dockerfile in it) or of a Dockerfile's text
    with no context; the image id. Build output goes to log."""
    import io
    errors = _errors()
    api = client(timeout=3600).api
    kwargs = dict(tag=tag, labels=labels, rm=True, forcerm=True, decode=True)
    if dockerfile_text is not None:
        kwargs["fileobj"] = io.BytesIO(dockerfile_text.encode())
    else:
        kwargs.update(path=context, dockerfile=dockerfile)
    image_id = None
    try:
        for item in api.build(**kwargs):
            if "error" in item:
                raise SandboxError(item["error"].strip())
            if log and item.get("stream", "").strip():
                log(item["stream"].rstrip())
            if "aux" in item and "ID" in item["aux"]:
                image_id = item["aux"]["ID"]
    except errors.APIError as e:
        raise SandboxError(e.explanation or str(e)) from e
    info = image_info(tag)
    if not info:
        raise SandboxError(f"docker build ended but there is no image '{tag}'")
    return image_id or info["id"]

