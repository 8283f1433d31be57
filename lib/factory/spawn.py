"""One agent's life: claim, workspace, container, agent loop, harvest, record, clean up.

Whatever happens (a model error, a killed container, a signal), the container and the
workspace are removed and the run is recorded in git. What a kill -9 of this process
leaves behind (a container, a workspace) stops by itself at its deadline and is removed
by the next spawn's reap.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from . import contracts, intent, roles, runs
from .gitstore import GitError, RefConflict, Repo, retry_cas
from .issues import IssueStore, NotClaimable
from .redact import Redactor

STATUS_EXIT = {"ok": 0, "failed": 1, "timeout": 3, "budget": 4, "error": 5, "stuck": 6}
EXIT_NOT_RUN = 7
HARVEST_GRACE_S = 120     # the container outlives the agent's wall budget by this much
RESULT_BUNDLE = "/workspace/out/result.bundle"


_ending = threading.Event()  # set once a run has begun to end: from then on no signal cuts it


def interrupt_on_signals() -> None:
    """SIGTERM, SIGHUP and SIGINT end the run as an interrupt: cleaned up and recorded.
    Only the first does: once the run is ending, recording it must not be cut short."""
    def handler(signum, frame):
        if not _ending.is_set():
            _ending.set()
            raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, handler)


class NotRun(Exception):
    """The task was not run (its issue could not be claimed); nothing changed."""


@dataclass
class Log:
    """Messages for stderr and for the record's log tail, redacted on the way in."""
    lines: list = field(default_factory=list)
    echo: bool = True
    redactor: Redactor = field(default_factory=Redactor)

    def __call__(self, msg: str) -> None:
        msg = self.redactor.text(msg)
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        self.lines.append(line)
        if self.echo:
            import sys
            print(f"factory-spawn: {msg}", file=sys.stderr, flush=True)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class ModelWarmup(threading.Thread):
    """Import the SDK and build the client while the container starts (the import alone
    takes about a second)."""

    def __init__(self, name: str, max_tokens: int):
        super().__init__(daemon=True)
        self.name_, self.max_tokens = name, max_tokens
        self.model, self.error = None, None

    def run(self):
        try:
            from .model import Model
            self.model = Model(self.name_, self.max_tokens)
        except Exception as e:  # raised again in the caller's thread by get()
            self.error = e

    def get(self):
        self.join()
        if self.error:
            raise self.error
        return self.model


def branch_for(issue_id: str) -> str:
    return f"factory/{issue_id}"


def default_ref(repo: Repo) -> str:
    head = repo.git("symbolic-ref", "-q", "HEAD", check=False).decode().strip()
    return head or "HEAD"


def model_name_for(task: dict, cfg: dict | None) -> str:
    return (task.get("model") or os.environ.get("FACTORY_MODEL")
            or (cfg or {}).get("model", {}).get("name") or "claude-sonnet-4-5")


def run_task(task: dict, repo: Repo, cfg: dict, *, log: Log, run_id: str | None = None,
             warm: ModelWarmup | None = None) -> dict:
    """Run one task to its end; return the run JSON (already recorded in git). `warm`:
    a ModelWarmup the caller started as early as it could."""
    from . import images, sandbox
    from .agent import Agent, Budgets
    from .workspace import Workspace, WorkspaceError

    run_id = run_id or runs.new_run_id()
    t0 = time.monotonic()
    kind = task["kind"]
    budgets_cfg = {**cfg["budgets"], **task.get("budgets", {})}
    model_name = model_name_for(task, cfg)
    if warm is None:
        warm = ModelWarmup(model_name, cfg["model"]["max_tokens"])
        warm.start()

    store = IssueStore(repo)
    issue = task.get("issue")
    actor = f"run:{run_id}"
    if issue is not None and kind == "worker":
        issue = _claim(store, issue, actor)

    run = {"v": 1, "run": run_id, "kind": kind, "issue": issue["id"] if issue else None,
           "status": "error", "reason": "", "model": model_name, "started": contracts.now_iso(),
           "ended": None, "ref": None, "base": None, "branch": None, "commit": None, "findings": [],
           "turns": 0, "usage": {}, "cost_usd": 0.0, "model_retries": 0, "container": None,
           "record": runs.RUNS_PREFIX + run_id, "oom_kills": None, "infra": False, "timings": {}}
    transcript: list = []
    ws = Workspace(run_id)
    sb = None
    work_commit = None
    reaper = threading.Thread(target=_reap_orphans, args=(log,), daemon=True)
    reaper.start()  # leftovers of killed spawns: not on the way to the first model request
    try:
        ref = task.get("ref") or (issue or {}).get("target") or default_ref(repo)
        run["ref"] = ref
        branch = branch_for(issue["id"]) if issue else f"factory/run-{run_id}"
        ws.create(issue=run["issue"])
        base = repo.clone_for_agent(ref, ws.repo, branch)
        run["base"] = base
        image = images.ensure_image(images.recipe_from_config(cfg, repo.work_tree()), log=log)
        res = cfg["resources"][kind]
        wall = float(budgets_cfg["wall_seconds"])
        sb = sandbox.Sandbox.start(
            image, ws.mount,
            labels={"factory.repo": repo.git_dir, "factory.issue": run["issue"] or "", "factory.run": run_id,
                    "factory.kind": kind, "factory.slot": os.environ.get("FACTORY_SLOT", "")},
            cpus=res["cpus"], memory=res["memory"], pids=res["pids"], tmp_size=res["tmp"],
            deadline_s=int(wall + HARVEST_GRACE_S), name=f"factory-{run_id}")
        run["container"] = sb.name
        run["timings"]["container_ready_s"] = round(time.monotonic() - t0, 3)
        layer = intent.layer_text(repo.read_tree(base, intent.INTENT_DIR + "/"))
        system = intent.system_prompt(roles.instructions(kind), layer)
        model = warm.get()
        model.name, model.max_tokens = model_name, cfg["model"]["max_tokens"]  # known only now
        agent = Agent(model, sb, kind=kind, system=system, log=log,
                      on_turn=lambda o: ws.write_progress({"turns": o.turns, "tokens": o.usage.total_tokens,
                                                           "cost_usd": round(o.cost_usd, 6)}),
                      budgets=Budgets(turns=budgets_cfg["turns"], tokens=budgets_cfg["tokens"],
                                      cost_usd=budgets_cfg["cost_usd"], wall_seconds=wall))
        outcome = agent.run(roles.first_message({**task, "issue": issue}))
        transcript = outcome.transcript
        run.update(status=outcome.status, reason=outcome.reason, turns=outcome.turns,
                   usage=outcome.usage.to_dict(), cost_usd=round(outcome.cost_usd, 6),
                   model_retries=outcome.model_retries, findings=outcome.findings)
        if outcome.first_request_at:
            run["timings"]["first_request_s"] = round(outcome.first_request_at - t0, 3)
        if outcome.last_answer_at:
            run["timings"]["last_answer_s"] = round(outcome.last_answer_at - t0, 3)
        if kind == "worker" and sb.alive():
            work_commit = _harvest(repo, sb, ws, base, branch, run_id, log)
            if work_commit:
                run["branch"], run["commit"] = branch, work_commit
        if run["status"] == "ok" and kind == "worker" and not work_commit:
            run["status"], run["reason"] = "failed", "the agent finished without changing anything"
    except KeyboardInterrupt:
        run["status"], run["reason"] = "error", "interrupted by a signal"
    except (sandbox.SandboxError, sandbox.EngineUnavailable, images.ImageError, WorkspaceError, GitError) as e:
        run["status"], run["reason"] = "error", str(e)
    except Exception as e:
        from .model import ModelError
        if isinstance(e, ModelError):  # raised before the loop, e.g. while building the client
            run["status"], run["reason"] = "error", f"model: {e}"
        else:  # a bug: still a recorded run with its cause, never a lost one
            import traceback
            log("internal error:\n" + traceback.format_exc())
            run["status"], run["reason"] = "error", f"internal error: {type(e).__name__}: {e}"
    finally:
        _ending.set()
        if sb is not None and run["status"] != "ok":
            try:
                run["oom_kills"] = sb.oom_kills() if sb.alive() else None  # exec OOMs do not show
            except sandbox.SandboxError:                                   # in docker's OOMKilled
                pass
        reaper.join()
        if run["status"] in ("error", "failed") and not sandbox.engine_info()["ok"]:
            # The engine went away under the run: the factory's trouble, not the issue's.
            run["infra"] = True
            run["reason"] += " (the Docker engine is not answering)"
        # Removing the container waits until it is gone; record the run meanwhile.
        cleanup = threading.Thread(target=_clean_up, args=(sb, ws, run_id))
        cleanup.start()
        try:
            run["ended"] = contracts.now_iso()
            redactor = Redactor()
            run = redactor.clean(run)
            _record(repo, run, transcript, log, redactor, work_commit)
            if issue is not None and kind == "worker":
                _settle_issue(store, issue, run, cfg["budgets"], actor)
        finally:
            cleanup.join()
            run["timings"]["total_s"] = round(time.monotonic() - t0, 3)
    return run


def _reap_orphans(log) -> None:
    from . import sandbox, workspace
    try:
        removed = sandbox.reap()
        if removed:
            log(f"removed {len(removed)} container(s) whose spawn was gone")
        workspace.reap()
    except Exception as e:  # reaping is housekeeping: it must never fail a run
        log(f"could not reap leftovers: {e}")


def _clean_up(sb, ws, run_id: str) -> None:
    from . import sandbox
    try:
        if sb is not None:
            sb.remove()
        else:
            # An interrupt between the container's creation and `sb` being set leaves one
            # this function was not handed: find the run's container by its label.
            sandbox.reap(owner_alive=lambda labels: False, filters={"factory.run": run_id})
    except (sandbox.SandboxError, sandbox.EngineUnavailable, OSError):
        pass  # the engine is gone: the container went with it, or expires at its deadline
    ws.remove()


def _claim(store: IssueStore, issue: dict, actor: str) -> dict:
    """Take the issue: claim it when open; accept it when already claimed (the pipeline
    `next --claim | factory-spawn` hands it over claimed)."""
    current = store.get(issue["id"])
    if current["state"] == "claimed":
        return current
    try:
        return store.claim(current["id"], actor)
    except NotClaimable as e:
        raise NotRun(str(e))


HARVEST_SCRIPT = r"""
set -e
cd /workspace/repo
git -c core.hooksPath=/dev/null add -A
if ! git diff --cached --quiet; then
  git -c core.hooksPath=/dev/null commit -q --no-verify -m "factory: work left uncommitted by run {run}"
fi
rm -rf /workspace/out && mkdir /workspace/out   # whatever the agent made of out/, start clean
if [ "$(git rev-parse HEAD)" != "{base}" ]; then
  git bundle create -q {bundle} {base}..HEAD
fi
"""


def _harvest(repo: Repo, sb, ws, base: str, branch: str, run_id: str, log) -> str | None:
    """Commit what the agent left, bundle it inside the container, and move the issue's
    branch to it from the host's side. Returns the commit, or None when there is none."""
    r = sb.exec(HARVEST_SCRIPT.format(run=run_id, base=base, bundle=RESULT_BUNDLE), timeout=120,
                workdir="/workspace/repo")
    if r.exit_code != 0:
        log(f"harvest: could not bundle the agent's work: {r.output.strip()[-500:]}")
        return None
    bundle = ws.take_bundle()
    if bundle is None:
        return None
    heads = repo.unbundle(bundle)
    commit = heads.get("HEAD")
    if commit is None:
        log("harvest: the bundle carries no HEAD")
        return None
    if not repo.is_ancestor(base, commit):
        log("harvest: refused: the agent's work does not descend from where it started")
        return None
    ref = "refs/heads/" + branch

    def move():
        repo.update_refs([(ref, commit, repo.resolve(ref))])
    retry_cas(move)
    log(f"harvest: {branch} -> {commit[:12]}")
    return commit


def _iso_after(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(repo, run, transcript, log, redactor, work_commit):
    try:
        runs.record(repo, run, transcript, log.text(), redactor, work_commit)
    except (GitError, RefConflict) as e:
        log(f"could not record the run: {e}")
        run["record"] = None


def _settle_issue(store: IssueStore, issue: dict, run: dict, budgets: dict, actor: str) -> None:
    """review when the work is on a branch; otherwise back to open (or failed past the
    attempt limit) and not ready again before retry_backoff_seconds, doubled per attempt.
    A run stopped by a signal is not counted against the issue."""
    if run["status"] == "ok":
        patch = {"state": "review", "branch": run["branch"], "claimed_by": None}
    elif run["reason"] == "interrupted by a signal" or run.get("infra"):
        patch = {"state": "open", "claimed_by": None}  # not the issue's fault: not counted
    else:
        attempts = store.get(issue["id"])["attempts"] + 1
        wait = budgets["retry_backoff_seconds"] * 2 ** (attempts - 1)
        patch = {"state": "failed" if attempts >= budgets["attempts"] else "open", "attempts": attempts,
                 "claimed_by": None, "not_before": _iso_after(wait) if wait else None}
        if run.get("branch"):
            patch["branch"] = run["branch"]
    patch["add_runs"] = [run["run"]]
    store.update(issue["id"], patch, actor)
    if run["status"] != "ok":
        store.comment(issue["id"], f"run {run['run']} ended {run['status']}: {run['reason']}"[:4000], actor)
