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

from . import agentrepo, contracts, env, intent, roles, runs
from .gitstore import GitError, RefConflict, Repo
from .issues import IssueStore, NotClaimable, make_event
from .redact import Redactor

# factory-spawn's exit codes (the run's status, "not run") live with every other tool's in exits.py.

HARVEST_GRACE_S = 120     # the container outlives the agent's wall budget by this much


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
    tool: str = "factory-spawn"  # who says it on stderr

    def __call__(self, msg: str) -> None:
        msg = self.redactor.text(msg)
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        self.lines.append(line)
        if self.echo:
            import sys
            print(f"{self.tool}: {msg}", file=sys.stderr, flush=True)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class ModelWarmup(threading.Thread):
    """Import the SDK and build the client while the container starts (the import alone
    takes about a second); then load the secret detectors, which the first request does
    not wait for."""

    def __init__(self, name: str, max_tokens: int):
        super().__init__(daemon=True)
        self.name_, self.max_tokens = name, max_tokens
        self.model, self.error = None, None
        self.ready = threading.Event()

    def run(self):
        try:
            from .model import Model
            self.model = Model(self.name_, self.max_tokens)
        except Exception as e:  # raised again in the caller's thread by get()
            self.error = e
        finally:
            self.ready.set()
        try:
            from . import redact
            redact.detectors()  # loaded once per process; the records need them at the end
        except Exception:
            pass  # the first redaction loads them again, and says why if it cannot

    def get(self):
        self.ready.wait()
        if self.error:
            raise self.error
        return self.model


def branch_for(issue_id: str) -> str:
    return f"factory/{issue_id}"


def default_ref(repo: Repo) -> str:
    head = repo.git("symbolic-ref", "-q", "HEAD", check=False).decode().strip()
    return head or "HEAD"


def model_name_for(task: dict, cfg: dict | None) -> str:
    return (task.get("model") or env.get("FACTORY_MODEL")
            or (cfg or {}).get("model", {}).get("name") or "claude-sonnet-4-5")


def run_task(task: dict, repo: Repo, cfg: dict, *, log: Log, run_id: str | None = None,
             warm: ModelWarmup | None = None) -> dict:
    """Run one task to its end; return the run JSON (already recorded in git). `warm`:
    a ModelWarmup the caller started as early as it could."""
    from . import images, sandbox
    from .agent import Agent, Budgets, ToolsUnavailable
    from .workspace import Workspace, WorkspaceError

    run_id = run_id or runs.new_run_id()
    token = None
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
        issue = _claim(store, issue, actor, float(budgets_cfg["wall_seconds"]) + HARVEST_GRACE_S)
        token = issue.get("claim_token")

    run = {"v": 1, "run": run_id, "kind": kind, "issue": issue["id"] if issue else None,
           "status": "error", "reason": "", "model": model_name, "started": contracts.now_iso(),
           "ended": None, "ref": None, "base": None, "branch": None, "commit": None, "findings": [],
           "turns": 0, "usage": {}, "cost_usd": 0.0, "model_retries": 0, "container": None,
           "record": runs.RUNS_PREFIX + run_id, "oom_kills": None, "infra": False, "landed": None,
           "timings": {}}
    transcript: list = []
    ws = Workspace(repo, run_id)
    sb = None
    work_commit = None
    engine_lost = False  # a Docker call of this run could not reach the engine
    reaper = threading.Thread(target=_reap_orphans, args=(repo, log), daemon=True)
    reaper.start()  # leftovers of killed spawns: not on the way to the first model request
    try:
        ref = task.get("ref") or (issue or {}).get("target") or default_ref(repo)
        run["ref"] = ref
        branch = branch_for(issue["id"]) if issue else f"factory/run-{run_id}"
        ws.create(issue=run["issue"])
        base = repo.resolve(ref)
        if base is None:
            raise GitError(f"'{ref}' is not a commit in {repo.git_dir}")
        run["base"] = base
        image = images.ensure_image(images.recipe_from_config(cfg, repo.work_tree()), log=log)
        res = cfg["resources"][kind]
        wall = float(budgets_cfg["wall_seconds"])
        sb = sandbox.Sandbox.start(
            image, objects=os.path.join(repo.common_dir, "objects"),
            labels={"factory.repo": repo.common_dir, "factory.issue": run["issue"] or "", "factory.run": run_id,
                    "factory.kind": kind, "factory.slot": env.get("FACTORY_SLOT", "")},
            cpus=res["cpus"], memory=res["memory"], pids=res["pids"], tmp_size=res["tmp"], disk=res["disk"],
            deadline_s=int(wall + HARVEST_GRACE_S), name=f"factory-{run_id}",
            runtime=cfg["sandbox"]["runtime"])
        run["container"] = sb.name
        checkout = _Background(agentrepo.check_out, sb, base, branch, cfg["harvest"]["exclude"])
        run["timings"]["container_ready_s"] = round(time.monotonic() - t0, 3)
        # The intent layer of the commit worked on; a postmortem agent's comes from the
        # commit its failure was judged against: the refused head's own intent/ is the
        # failed agent's work, not the repository's.
        layer = intent.layer_text(repo.read_tree(task.get("intent") or base, intent.INTENT_DIR + "/"))
        system = intent.system_prompt(roles.instructions(kind), layer)
        model = warm.get()
        model.name, model.max_tokens = model_name, cfg["model"]["max_tokens"]  # known only now
        agent = Agent(model, sb, kind=kind, system=system, log=log,
                      on_turn=lambda o: ws.write_progress({"turns": o.turns, "tokens": o.usage.total_tokens,
                                                           "cost_usd": round(o.cost_usd, 6)}),
                      budgets=Budgets(turns=budgets_cfg["turns"], tokens=budgets_cfg["tokens"],
                                      cost_usd=budgets_cfg["cost_usd"], wall_seconds=wall),
                      before_tools=checkout.wait)
        outcome = agent.run(roles.first_message({**task, "issue": issue}))
        checkout.wait()  # a run whose model called no tool still needs it for the harvest
        transcript = outcome.transcript
        run.update(status=outcome.status, reason=outcome.reason, turns=outcome.turns,
                   usage=outcome.usage.to_dict(), cost_usd=round(outcome.cost_usd, 6),
                   model_retries=outcome.model_retries, findings=outcome.findings)
        if kind in ("sensor", "adversary"):
            run["findings_refused"] = outcome.findings_refused
        if kind == "postmortem":
            run["postmortem"] = outcome.postmortem
        if outcome.infra:
            run["infra"] = True
        if outcome.first_request_at:
            run["timings"]["first_request_s"] = round(outcome.first_request_at - t0, 3)
        if outcome.last_answer_at:
            run["timings"]["last_answer_s"] = round(outcome.last_answer_at - t0, 3)
        if kind == "worker" and not sb.engine_lost and sb.alive():
            try:
                work_commit = agentrepo.harvest(repo, sb, ws.bundle, base, run_id, cfg["harvest"], log,
                                                deadline_pid=checkout.result)
            except agentrepo.HarvestRefused as e:
                log(f"harvest: refused: {e}")
                if run["status"] == "ok":
                    run["status"], run["reason"] = "failed", f"harvest refused: {e}"
            if work_commit:
                run["branch"], run["commit"] = branch, work_commit
            elif run["status"] == "ok":
                run["status"], run["reason"] = "failed", "the agent finished without changing anything"
    except KeyboardInterrupt:
        run["status"], run["reason"] = "error", "interrupted by a signal"
    except (sandbox.SandboxError, sandbox.EngineUnavailable, images.ImageError, WorkspaceError, GitError,
            ToolsUnavailable) as e:
        run["status"], run["reason"] = "error", str(e)
        engine_lost = isinstance(e, sandbox.EngineUnavailable)
    except Exception as e:
        from .model import ModelError
        if isinstance(e, ModelError):  # raised before the loop, e.g. while building the client
            run["status"], run["reason"] = "error", f"model: {e}"
            run["infra"] = run["infra"] or e.kind == "auth"
        else:  # a bug: still a recorded run with its cause, never a lost one
            import traceback
            log("internal error:\n" + traceback.format_exc())
            run["status"], run["reason"] = "error", f"internal error: {type(e).__name__}: {e}"
    finally:
        _ending.set()
        if sb is not None and run["status"] != "ok" and not sb.engine_lost:
            try:
                run["oom_kills"] = sb.oom_kills() if sb.alive() else None  # exec OOMs do not show
            except (sandbox.SandboxError, sandbox.EngineUnavailable):      # in docker's OOMKilled
                pass
        reaper.join()
        # The engine went away under the run: the factory's trouble, not the issue's. A call
        # that could not reach the engine says so for certain, even when the engine is back
        # by now (restarted at once, as a service manager does); failing that, an engine that
        # does not answer now is the likeliest cause.
        engine_lost = engine_lost or (sb is not None and sb.engine_lost)
        if run["status"] in ("error", "failed") and (engine_lost or not sandbox.engine_info()["ok"]):
            run["infra"] = True
            run["reason"] += (" (the Docker engine was not answering)" if engine_lost
                              else " (the Docker engine is not answering)")
        # Removing the container waits until it is gone; record the run meanwhile.
        cleanup = threading.Thread(target=_clean_up, args=(repo, sb, ws, run_id))
        cleanup.start()
        try:
            if issue is not None and kind == "worker":
                _settle_issue(store, issue, run, cfg["budgets"], actor, token, log)
            run["ended"] = contracts.now_iso()
            redactor = Redactor()
            run = redactor.clean(run)
            _record(repo, run, transcript, log, redactor, work_commit if run["landed"] else None)
        finally:
            cleanup.join()
            run["timings"]["total_s"] = round(time.monotonic() - t0, 3)
    return run


def _reap_orphans(repo, log) -> None:
    """What killed spawns of this repository left (never another repository's): their
    claims, re-queued uncounted, their containers and their run directories."""
    from . import sandbox, workspace
    try:
        requeued = IssueStore(repo).requeue_dead_claims(f"reaper:{os.getpid()}")
        if requeued:
            log(f"re-queued {len(requeued)} issue(s) whose claim's holder was gone: {', '.join(requeued)}")
        removed = sandbox.reap(filters={"factory.repo": repo.common_dir})
        if removed:
            log(f"removed {len(removed)} container(s) whose spawn was gone")
        workspace.reap(repo)
    except Exception as e:  # reaping is housekeeping: it must never fail a run
        log(f"could not reap leftovers: {e}")


def _clean_up(repo, sb, ws, run_id: str) -> None:
    from . import sandbox
    try:
        if sb is not None:
            sb.remove()
        else:
            # An interrupt between the container's creation and `sb` being set leaves one
            # this function was not handed: find the run's container by its label.
            sandbox.reap(owner_alive=lambda labels: False,
                         filters={"factory.run": run_id, "factory.repo": repo.common_dir})
    except (sandbox.SandboxError, sandbox.EngineUnavailable, OSError):
        pass  # the engine is gone: the container went with it, or expires at its deadline
    ws.remove()


def _claim(store: IssueStore, issue: dict, actor: str, seconds: float) -> dict:
    """Take the issue: claim it when open; when already claimed (the pipeline `next
    --claim | factory-spawn` hands it over claimed), take over the claim it was handed.
    Either way this process holds the lease from now on (see leases.py)."""
    from . import leases
    current = store.get(issue["id"])
    try:
        if current["state"] == "claimed":
            token = issue.get("claim_token") or current.get("claim_token")
            return store.take_over(current["id"], token, leases.new(seconds), actor)
        return store.claim(current["id"], actor, lease=leases.new(seconds))
    except NotClaimable as e:
        raise NotRun(f"{e}; nothing was run")


class _Background(threading.Thread):
    """fn(*args) in a thread; wait() joins it and raises what it raised, once; then
    `result` is what it returned."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.error, self.result = fn, args, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # raised again in the caller's thread
            self.error = e

    def wait(self):
        self.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _iso_after(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(repo, run, transcript, log, redactor, work_commit):
    try:
        runs.record(repo, run, transcript, log.text(), redactor, work_commit)
    except (GitError, RefConflict) as e:
        log(f"could not record the run: {e}")
        run["record"] = None


class ClaimSpent(Exception):
    """The run's claim is no longer the issue's: another run under it landed first, or
    the issue was re-queued or taken since."""


def _settle_issue(store: IssueStore, issue: dict, run: dict, budgets: dict, actor: str, token: str | None,
                  log) -> None:
    """Land the run: in one compare-and-swap, move the issue's branch to the work (if
    any) and the issue to review, or back to open (failed past the attempt limit, not
    ready again before retry_backoff_seconds, doubled per attempt). Only under the claim
    the run was started with: a run started twice lands once. A run stopped by a signal
    or by the engine going away is not counted against the issue."""
    branch_ref = "refs/heads/" + run["branch"] if run.get("branch") else None

    def events(cur, last):
        if cur["state"] != "claimed" or cur.get("claim_token") != token:
            raise ClaimSpent(f"issue is {cur['state']}" + (f" by {cur['claimed_by']}" if cur.get("claimed_by") else ""))
        if run["status"] == "ok":
            fields = {"state": "review", "branch": run["branch"], "claimed_by": None}
        elif run["reason"] == "interrupted by a signal" or run.get("infra"):
            fields = {"state": "open", "claimed_by": None}  # not the issue's fault: not counted
        else:
            attempts = cur["attempts"] + 1
            wait = budgets["retry_backoff_seconds"] * 2 ** (attempts - 1)
            fields = {"state": "failed" if attempts >= budgets["attempts"] else "open", "attempts": attempts,
                      "claimed_by": None, "not_before": _iso_after(wait) if wait else None}
            if run.get("branch"):
                fields["branch"] = run["branch"]
        evs = [make_event("set", actor, after=last, fields=fields)]
        evs.append(make_event("runs", actor, after=evs[-1]["at"], add=[run["run"]]))
        if run["status"] != "ok":
            text = f"run {run['run']} ended {run['status']}: {run['reason']}"[:4000]
            evs.append(make_event("comment", actor, after=evs[-1]["at"], text=text))
        return evs

    def branch_move(cur):
        return [(branch_ref, run["commit"], store.repo.resolve(branch_ref))] if branch_ref else []

    try:
        store.change(issue["id"], events, also=branch_move)
        run["landed"] = True
        if branch_ref:
            log(f"landed: {run['branch']} -> {run['commit'][:12]}")
    except ClaimSpent as e:
        run["landed"] = False
        why = f"its claim was spent ({e}); the work was not landed"
        log(f"not landed: {why}")
        if run["status"] == "ok":
            run["status"] = "failed"
        run["reason"] = (run["reason"] + "; " if run["reason"] else "") + why
        run["branch"] = None
        store.update(issue["id"], {"add_runs": [run["run"]]}, actor)
        store.comment(issue["id"], f"run {run['run']} ended {run['status']}: {run['reason']}"[:4000], actor)
