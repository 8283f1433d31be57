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
import re
import time

from . import agentrepo, contracts, images, sandbox

OUTPUT_TAIL_CHARS = 4000   # what a verdict keeps of a check's output: its end, where failures show
CHECK_BRANCH = "factory-check"


class CheckRunError(Exception):
    """The checks could not be run at all (no image, no engine, no checkout): the
    factory's trouble, never a verdict on the commit."""


def run_checks(repo, cfg: dict, commit: str, checks: list[dict], *, env: dict | None = None,
               timeout_s: float = 600, log=None, kind: str = "gate",
               output_limit: int = OUTPUT_TAIL_CHARS) -> list[dict]:
    """Run each {"name", "command"} with `bash -c` at the top of `commit`'s tree, in one
    container; return one {"name", "command", "exit_code", "ok", "timed_out",
    "output_tail", "seconds"} per check, in order. `timeout_s` bounds all of them
    together: a check that starts with no time left is not run (exit_code None). The
    container is removed whatever happens."""
    if not checks:
        return []
    box = CheckBox(repo, cfg, kind=kind, deadline_s=timeout_s + 300, log=log)
    try:
        return box.run(commit, checks, env=env, timeout_s=timeout_s, output_limit=output_limit)
    finally:
        box.close()


class CheckBox:
    """One container for checks, started in the background as soon as it is made, so
    that its start overlaps what the caller does meanwhile (computing the merge, reading
    main's config). run() waits for it; close() removes it without waiting for the engine
    to finish (auto_remove and the deadline end it in any case)."""

    def __init__(self, repo, cfg: dict, *, kind: str = "gate", deadline_s: float = 2100, log=None):
        import threading
        self.repo, self.cfg, self.kind, self.log = repo, cfg, kind, log or (lambda msg: None)
        self.sb, self.error, self.closed = None, None, False
        self._thread = threading.Thread(target=self._start, args=(int(deadline_s),), daemon=True)
        self._thread.start()

    def _start(self, deadline_s: int) -> None:
        try:
            image = images.ensure_image(images.recipe_from_config(self.cfg, self.repo.work_tree()), log=self.log)
            res = self.cfg["resources"][self.kind]
            self.sb = sandbox.Sandbox.start(
                image, objects=os.path.join(self.repo.common_dir, "objects"),
                labels={"factory.repo": self.repo.common_dir, "factory.kind": self.kind,
                        "factory.run": f"check-{os.getpid()}", "factory.issue": ""},
                cpus=res["cpus"], memory=res["memory"], pids=res["pids"], tmp_size=res["tmp"], disk=res["disk"],
                deadline_s=deadline_s, runtime=self.cfg["sandbox"]["runtime"])
        except images.ImageError as e:
            self.error = CheckRunError(f"no image to run the checks in: {e}")
        except (sandbox.SandboxError, sandbox.EngineUnavailable) as e:
            self.error = CheckRunError(str(e))
        except Exception as e:  # raised again in the caller's thread
            self.error = e

    def run(self, commit: str, checks: list[dict], *, env: dict | None = None, timeout_s: float = 600,
            output_limit: int = OUTPUT_TAIL_CHARS) -> list[dict]:
        """output_limit: how much of each check's output's end its result keeps (a sensor
        parses more of it than a verdict shows)."""
        deadline = time.monotonic() + timeout_s
        self._thread.join()
        if self.error:
            raise self.error
        sb = self.sb
        try:
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
                self.log(f"check {check['name']}: {check['command']}")
                r = sb.exec(check["command"], timeout=left, workdir=sandbox.WORKSPACE + "/repo", env=env,
                            max_output=max(30000, output_limit))
                out = r.output
                if r.timed_out:
                    out += f"\n[factory: the check was stopped after {left:.0f} s (gate.timeout_seconds)]"
                results.append(_result(check, r.exit_code, r.timed_out, out, r.duration, output_limit))
            return results
        except (sandbox.SandboxError, sandbox.EngineUnavailable) as e:
            raise CheckRunError(str(e)) from e

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._thread.join()
        if self.sb is not None:
            try:
                self.sb.remove(wait=False)
            except (sandbox.SandboxError, sandbox.EngineUnavailable):
                pass  # it expires at its deadline


def _result(check: dict, code: int | None, timed_out: bool, output: str, seconds: float,
            limit: int = OUTPUT_TAIL_CHARS) -> dict:
    return {"name": check["name"], "command": check["command"], "exit_code": code,
            "ok": code == 0, "timed_out": timed_out, "output_tail": tail(output, limit),
            "seconds": round(seconds, 3)}


# Terminal escapes (colours, cursor moves, titles): what test runners print on a tty.
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")


def printable(text: str) -> str:
    """Output as text a comment may hold: escapes dropped, other control characters but
    tab and newline shown as '?' (a comment is validated as text wherever it travels)."""
    text = _ESCAPES.sub("", text).replace("\r\n", "\n")
    return contracts.BODY_CONTROL_RE.sub("?", text.replace("\r", "\n"))


def tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    text = printable(text).rstrip()
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    nl = cut.find("\n")
    return "[...]\n" + (cut[nl + 1:] if 0 <= nl < 200 else cut)
