"""The only caller of Docker: the engine, and (as they come) agents' containers.

The docker SDK is imported on first use, so tools that never touch Docker (and every
--help) do not pay for it.
"""

from __future__ import annotations


class EngineUnavailable(Exception):
    """No Docker engine answers; the message says how to start one."""


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
