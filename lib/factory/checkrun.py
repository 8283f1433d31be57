"""Run shell checks on one commit, in a fresh hardened container of their own.

The gate's checks and the prohibitions' checks run here, and so does a postmortem's
proposed check when it is tried on the evidence. The container is the agents' sandbox
(no network, no capabilities, read-only root, limits of the slot's kind); the commit is
checked out inside it from the repository's objects, mounted read-only, exactly as an
agent's checkout is made. Nothing the checks do reaches the host: their only output is
what they print and their exit codes.
"""

from __future__ import annotations

import os
import time

from . import agentrepo, images, sandbox

OUTPUT_TAIL_CHARS = 4000   # what a verdict keeps of a check's output: its end, where failures show
CHECK_BRANCH = "factory-check"


class CheckRunError(Exception):
    """The checks could not be run at all (no image, no engine, no checkout): the
    factory's trouble, never a verdict on the commit."""


def run_checks(repo, cfg: dict, commit: str, checks: list[dict], *, env: dict | None = None,
               timeout_s: float = 600, log=None, kind: str = "gate") -> list[dict]:
    """Run each {"name", "command"} with `bash -c` at the top of `commit`'s tree, in one
    container; return one {"name", "command", "exit_code", "ok", "timed_out",
    "output_tail", "seconds"} per check, in order. `timeout_s` bounds all of them
    together: a check that starts with no time left is not run (exit_code None). The
    container is removed whatever happens."""
    log = log or (lambda msg: None)
    if not checks:
        return []
    try:
        image = images.ensure_image(images.recipe_from_config(cfg, repo.work_tree()), log=log)
    except images.ImageError as e:
        raise CheckRunError(f"no image to run the checks in: {e}") from e
    res = cfg["resources"][kind]
    deadline = time.monotonic() + timeout_s
    sb = None
    try:
        sb = sandbox.Sandbox.start(
            image, objects=os.path.join(repo.common_dir, "objects"),
            labels={"factory.repo": repo.common_dir, "factory.kind": kind, "factory.run": f"check-{os.getpid()}",
                    "factory.issue": ""},
            cpus=res["cpus"], memory=res["memory"], pids=res["pids"], tmp_size=res["tmp"], disk=res["disk"],
            deadline_s=int(timeout_s) + 300, runtime=cfg["sandbox"]["runtime"])
        try:
            agentrepo.check_out(sb, commit, CHECK_BRANCH, [])
        except Exception as e:  # ToolsUnavailable: the image lacks git or bash
            raise CheckRunError(str(e)) from e
        results = []
        for check in checks:
            left = deadline - time.monotonic()
            if left < 1:
                results.append(_result(check, None, False, "not run: the checks' time (gate.timeout_seconds) "
                                                           "ran out before it", 0.0))
                continue
            log(f"check {check['name']}: {check['command']}")
            r = sb.exec(check["command"], timeout=left, workdir=sandbox.WORKSPACE + "/repo", env=env)
            out = r.output
            if r.timed_out:
                out += f"\n[factory: the check was stopped after {left:.0f} s (gate.timeout_seconds)]"
            results.append(_result(check, r.exit_code, r.timed_out, out, r.duration))
        return results
    except (sandbox.SandboxError, sandbox.EngineUnavailable) as e:
        raise CheckRunError(str(e)) from e
    finally:
        if sb is not None:
            try:
                sb.remove()
            except (sandbox.SandboxError, sandbox.EngineUnavailable):
                pass  # it expires at its deadline


def _result(check: dict, code: int | None, timed_out: bool, output: str, seconds: float) -> dict:
    return {"name": check["name"], "command": check["command"], "exit_code": code,
            "ok": code == 0, "timed_out": timed_out, "output_tail": tail(output),
            "seconds": round(seconds, 3)}


def tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    text = text.rstrip()
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    nl = cut.find("\n")
    return "[...]\n" + (cut[nl + 1:] if 0 <= nl < 200 else cut)
