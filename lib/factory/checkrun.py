"""Commands run on one commit in a fresh hardened container: the gate's checks, and a
proposed prohibition's check that factory-postmortem validates.

One container per call (sandbox.Sandbox: no network, no capabilities, read-only root,
the kind's resource limits), the commit checked out detached at /workspace/repo with its
objects borrowed read-only from the host's store, each command run with `bash -c` there,
and the container removed whatever happens. Nothing of the run is kept but the results.
"""

from __future__ import annotations

import os
import time

from .gitstore import Repo

OUTPUT_TAIL_LINES = 40
OUTPUT_TAIL_BYTES = 4096
GRACE_S = 60  # the container outlives the checks' timeout by this much (checkout, clean-up)

# The commit, detached, in a repository of the container's own whose objects are the
# host's, mounted read-only (git alternates), as agentrepo.CHECKOUT_SCRIPT makes an
# agent's checkout. $1 the commit.
CHECKOUT_SCRIPT = r"""
set -eu
git init -q /workspace/repo
cd /workspace/repo
echo /factory/objects > .git/objects/info/alternates
git update-ref --no-deref HEAD "$1"
git reset -q --hard
"""


class CheckRunError(Exception):
    """The commands could not be run at all (no engine, no image, no checkout)."""


def _tail(output: str) -> str:
    lines = output.rstrip("\n").splitlines()[-OUTPUT_TAIL_LINES:]
    text = "\n".join(lines)
    return text[-OUTPUT_TAIL_BYTES:]


def run_checks(repo: Repo, cfg: dict, commit: str, checks: list[dict], *, env: dict | None = None,
               timeout_s: float = 600, log=None, kind: str = "gate") -> list[dict]:
    """Run each {"name", "command"} at the top of `commit`'s tree, in order, within
    timeout_s for all of them together; one {"name", "command", "exit_code", "ok",
    "timed_out", "output_tail", "seconds"} per check (a check the time ran out before is
    timed out without running). Raises CheckRunError when nothing could run."""
    from . import images, sandbox
    log = log or (lambda msg: None)
    try:
        image = images.ensure_image(images.recipe_from_config(cfg, repo.work_tree()), log=log)
        res = cfg["resources"][kind]
        sb = sandbox.Sandbox.start(
            image, objects=os.path.join(repo.common_dir, "objects"),
            labels={"factory.repo": repo.common_dir, "factory.kind": kind, "factory.commit": commit},
            cpus=res["cpus"], memory=res["memory"], pids=res["pids"], tmp_size=res["tmp"], disk=res["disk"],
            deadline_s=int(timeout_s + GRACE_S), runtime=cfg["sandbox"]["runtime"])
    except (images.ImageError, sandbox.SandboxError, sandbox.EngineUnavailable) as e:
        raise CheckRunError(str(e)) from e
    try:
        deadline = time.monotonic() + timeout_s
        r = sb.exec(f"bash -c {_sq(CHECKOUT_SCRIPT)} checkout {commit}", timeout=120, workdir="/workspace")
        if r.exit_code != 0:
            raise CheckRunError(f"could not check out {commit[:12]} in the container: {r.output.strip()[-500:]}")
        results = []
        for check in checks:
            started = time.monotonic()
            left = deadline - started
            if left <= 1:
                results.append({"name": check["name"], "command": check["command"], "exit_code": None,
                                "ok": False, "timed_out": True, "output_tail": "(not run: no time was left)",
                                "seconds": 0.0})
                continue
            r = sb.exec(check["command"], timeout=left, workdir="/workspace/repo", env=env)
            results.append({"name": check["name"], "command": check["command"], "exit_code": r.exit_code,
                            "ok": r.exit_code == 0 and not r.timed_out, "timed_out": r.timed_out,
                            "output_tail": _tail(r.output), "seconds": round(time.monotonic() - started, 3)})
            log(f"check {check['name']} on {commit[:12]}: exit {r.exit_code}")
        return results
    except (sandbox.SandboxError, sandbox.EngineUnavailable) as e:
        raise CheckRunError(str(e)) from e
    finally:
        try:
            sb.remove()
        except (sandbox.SandboxError, sandbox.EngineUnavailable):
            pass  # gone with the engine, or expires at its deadline


def _sq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
