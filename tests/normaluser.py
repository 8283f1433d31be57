"""Run factory's tools as a normal user: uid 1000 in the docker group, as on a typical
machine, not as root.

The tests may run as root from a checkout a normal user cannot read (under /root, say),
with a Python that user cannot run. So the tools are copied, with the packages they
import, to a directory everyone can read, and run there by the system's Python of the
same version, under `setpriv` (root) or directly (when the tests already run as uid 1000).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from conftest import BIN, ROOT

UID = 1000


def _docker_gid() -> int | None:
    import grp
    try:
        return grp.getgrnam("docker").gr_gid
    except KeyError:
        return None


def why_not() -> str | None:
    """None when the tools can run as uid 1000 here, else the reason they cannot."""
    if os.geteuid() not in (0, UID):
        return f"the tests run as uid {os.geteuid()}: neither root (to become uid 1000) nor uid 1000"
    try:
        user = pwd.getpwuid(UID)
    except KeyError:
        return "no account has uid 1000 (as root: scripts/ensure-test-user makes one)"
    gid = _docker_gid()
    if gid is None or (gid != user.pw_gid and user.pw_name not in __import__("grp").getgrgid(gid).gr_mem):
        return f"{user.pw_name} (uid 1000) is not in the docker group (scripts/ensure-test-user adds it)"
    if not os.path.exists(_python()):
        return f"no system Python {sys.version_info.major}.{sys.version_info.minor} at {_python()}"
    return None


def _python() -> str:
    return f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


class NormalUser:
    def __init__(self, root: str):
        self.root = root
        self.bin = os.path.join(root, "bin")
        self.name = pwd.getpwuid(UID).pw_name

    def env(self, **extra) -> dict:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": pwd.getpwuid(UID).pw_dir, "USER": self.name,
               "LANG": "C.UTF-8", "PYTHONPATH": os.path.join(self.root, "site"), "PYTHONDONTWRITEBYTECODE": "1"}
        if os.environ.get("DOCKER_HOST"):
            env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        env.update(extra)
        return env

    def run(self, argv, *, cwd, env=None, input=None, timeout=300) -> subprocess.CompletedProcess:
        """argv as uid 1000 (with its groups), in cwd, with only `env` (see self.env)."""
        prefix = [] if os.geteuid() == UID else ["setpriv", f"--reuid={UID}", f"--regid={pwd.getpwuid(UID).pw_gid}",
                                                 "--init-groups", "--"]
        return subprocess.run(prefix + list(argv), cwd=cwd, env=env or self.env(), input=input,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def normal_user():
    reason = why_not()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"cannot run as a normal user, and under CI the tests must: {reason}")
        pytest.skip(reason)
    root = tempfile.mkdtemp(prefix="factory-as-user-")
    os.chmod(root, 0o755)
    site = os.path.join(root, "site")
    shutil.copytree(sysconfig.get_paths()["purelib"], site, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "_pytest", "pytest", "*.pth", "factory*"))
    shutil.copytree(os.path.join(ROOT, "lib", "factory"), os.path.join(site, "factory"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.makedirs(os.path.join(root, "bin"))
    for name in os.listdir(BIN):
        dest = os.path.join(root, "bin", name)
        with open(os.path.join(BIN, name)) as src, open(dest, "w") as out:
            # the shims find lib/ beside them; here the package is on PYTHONPATH instead
            out.write(f"#!{_python()}\n" + src.read().split("\n", 1)[1])
        os.chmod(dest, 0o755)
    subprocess.run(["chmod", "-R", "a+rX", root], check=True)
    yield NormalUser(root)
    shutil.rmtree(root, ignore_errors=True)


def chown_tree(path, uid=UID) -> None:
    """Give a tree to uid 1000, as a repository a normal user made (a no-op as that user)."""
    if os.geteuid() == 0:
        gid = pwd.getpwuid(uid).pw_gid
        for top, dirs, files in os.walk(path):
            for n in [top] + [os.path.join(top, x) for x in dirs + files]:
                os.lchown(n, uid, gid)
