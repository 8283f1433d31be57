"""A Docker engine of a test's own, beside the machine's default one: its own socket, data
root, exec root, pidfile, containerd (namespace and plugins namespace), cgroup parent and
daemon.json, its own network namespace, and no bridge, iptables or proxy, so it shares
nothing with the default engine and can be configured differently (say, with another
runtime registered).

`stop_daemon()` stops only dockerd (and so its containerd and containers), keeping its
directories, data and images: `start()` then brings the same engine back, as a machine's
engine comes back after a restart. `load_image()` copies an image in from the default
engine (`docker save | docker load`: a fresh engine has none).

Stopping it stops dockerd (which stops its containerd), then whatever of its own still
runs (a shim or a gVisor sandbox that a failed container start left behind: each names
the engine's directory on its command line), unmounts what is left under its directory,
removes its cgroups and its directory. The machine's default engine is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
CGROUP_ROOT = "/sys/fs/cgroup"


class EngineFailed(Exception):
    """The private engine could not start; the message carries the end of its log."""


class PrivateEngine:
    def __init__(self, daemon_json: dict | None = None, prefix: str = "factory-eng", data_tmpfs: str | None = "4g"):
        self.name = f"{prefix}-{secrets.token_hex(3)}"
        # Short on purpose: containerd's sockets live under the exec root and a unix
        # socket's path must fit in 108 bytes.
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp")
        self.socket = os.path.join(self.dir, "docker.sock")
        self.host = f"unix://{self.socket}"
        self.log_path = os.path.join(self.dir, "dockerd.log")
        self.config_path = os.path.join(self.dir, "daemon.json")
        with open(self.config_path, "w") as f:
            json.dump(daemon_json or {}, f)
        self.proc: subprocess.Popen | None = None
        self.data_tmpfs = data_tmpfs

    def env(self, base: dict | None = None) -> dict:
        return dict(base if base is not None else os.environ, DOCKER_HOST=self.host)

    def docker(self, *args, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True,
                              check=check, timeout=timeout, **kw)

    def answers(self) -> bool:
        try:
            return self.docker("info", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self) -> "PrivateEngine":
        """Start dockerd; again after stop_daemon(), on the same directories and data."""
        d = self.dir
        if self.proc is not None and self.proc.poll() is None:
            raise EngineFailed(f"dockerd (pid {self.proc.pid}) of {self.name} runs already")
        os.makedirs(f"{d}/data", exist_ok=True)
        if self.data_tmpfs and not self._mounted(f"{d}/data"):
            # Images in memory: a loaded image's ~10,000 files take seconds to delete from
            # disk, and an unmount takes none. Root only; elsewhere the disk serves.
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.data_tmpfs},mode=0710",
                            f"{self.name}-data", f"{d}/data"], capture_output=True)
        # A network namespace of its own: a dockerd started with --bridge=none deletes the
        # machine's docker0 bridge at start, which would break the default engine's
        # networking. Its containers have no network anyway, and the socket is a file.
        cmd = ["unshare", "--net", "--", "dockerd", "--config-file", self.config_path, "-H", self.host,
               "--data-root", f"{d}/data", "--exec-root", f"{d}/exec", "--pidfile", f"{d}/docker.pid",
               "--containerd-namespace", self.name, "--containerd-plugins-namespace", f"{self.name}-p",
               "--cgroup-parent", f"/{self.name}", "--bridge=none", "--iptables=false", "--ip-masq=false",
               "--ip6tables=false", "--userland-proxy=false"]
        with open(self.log_path, "ab") as log:  # a restart's log follows the first's
            # A session of its own: a Ctrl-C meant for pytest must not reach dockerd before
            # the teardown does, which stops it in order.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineFailed(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.answers():
                return self
            time.sleep(0.2)
        raise EngineFailed(f"dockerd did not answer within {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def containers(self) -> list[str]:
        return self.docker("ps", "-aq", check=False).stdout.split()

    def load_image(self, image: str, timeout: int = 300) -> None:
        """Copy `image` from the default engine into this one (7-15 s for the agent image);
        its tags come with it."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            load = self.docker("load", stdin=save.stdout, check=False, timeout=timeout)
        finally:
            save.stdout.close()
            err = save.stderr.read().decode(errors="replace")
            save.stderr.close()
        if save.wait() != 0 or load.returncode != 0:
            raise EngineFailed(f"cannot copy {image} into {self.name}: {err.strip() or load.stderr.strip()}")

    def stop_daemon(self) -> None:
        """Stop dockerd, as a machine's engine stops: its containerd, shims and containers
        go with it; its directories, data and images stay for start() to go on from.
        Returns once dockerd has exited and nothing of the engine runs."""
        self._stop_dockerd()
        self._kill_leftovers()

    def stop(self) -> None:
        """Stop everything this engine started and remove its traces; safe to call twice.
        Every step runs even when one before it failed."""
        try:
            # Shims and runtime processes first: dockerd waits ~10 s at shutdown for a shim
            # a failed start left behind (runsc's does); nothing here needs a graceful stop.
            self._kill_leftovers(keep={self.proc.pid if self.proc else -1, self._containerd_pid()})
        finally:
            try:
                self._stop_dockerd()
            finally:
                try:
                    self._kill_leftovers()
                    self._unmount()
                finally:
                    self._remove_cgroups()
                    shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_dockerd(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _mounted(self, path: str) -> bool:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)

    def _own_pids(self) -> list[int]:
        """Processes whose command line names this engine's directory (a unique temp
        path): its containerd, shims and runtime processes, nothing else's."""
        me, found = os.getpid(), []
        marker = self.dir.encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def _containerd_pid(self) -> int:
        try:
            with open(os.path.join(self.dir, "exec", "containerd", "containerd.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return -1

    def _kill_leftovers(self, keep: set = frozenset()) -> None:
        deadline = time.monotonic() + 10
        pids = [p for p in self._own_pids() if p not in keep]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)]
            time.sleep(0.05)

    def _unmount(self) -> None:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        mine = [p for p in points if p == self.dir or p.startswith(self.dir + "/")]
        for p in sorted(set(mine), key=len, reverse=True):  # the deepest first
            subprocess.run(["umount", "-l", p], capture_output=True)

    def _remove_cgroups(self) -> None:
        """rmdir every cgroup under this engine's cgroup parent, the deepest first. A
        cgroup whose last process has just died stays busy a moment: retry until then."""
        if not os.path.isdir(CGROUP_ROOT):
            return
        roots = [os.path.join(CGROUP_ROOT, self.name)]  # cgroup v2
        roots += [os.path.join(CGROUP_ROOT, c, self.name) for c in os.listdir(CGROUP_ROOT)]
        deadline = time.monotonic() + 10
        while True:
            left = [r for r in roots if os.path.isdir(r)]
            for root in left:
                for top, dirs, _ in os.walk(root, topdown=False):
                    for d in dirs:
                        _rmdir(os.path.join(top, d))
                _rmdir(root)
            if not any(os.path.isdir(r) for r in roots) or time.monotonic() > deadline:
                return
            time.sleep(0.1)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
