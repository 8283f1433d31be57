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
from .issues import IssueStore, NotClaimable, make_event
from .redact import Redactor

STATUS_EXIT = {"ok": 0, "failed": 1, "timeout": 3, "budget": 4, "error": 5, "stuck": 6}
EXIT_NOT_RUN = 7
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
            from . import redact
            from .model import Model
            redact.detectors()  # the secret detectors load once, off the critical path too
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
        issue = _claim(store, issue, actor)
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
                    "factory.kind": kind, "factory.slot": os.environ.get("FACTORY_SLOT", "")},
            cpus=res["cpus"], memory=res["memory"], pids=res["pids"], tmp_size=res["tmp"], disk=res["disk"],
            deadline_s=int(wall + HARVEST_GRACE_S), name=f"factory-{run_id}",
            runtime=cfg["sandbox"]["runtime"])
        run["container"] = sb.name
        checkout = _Background(_check_out, sb, base, branch, cfg["harvest"]["exclude"])
        run["timings"]["container_ready_s"] = round(time.monotonic() - t0, 3)
        layer = intent.layer_text(repo.read_tree(base, intent.INTENT_DIR + "/"))
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
        if outcome.infra:
            run["infra"] = True
        if outcome.first_request_at:
            run["timings"]["first_request_s"] = round(outcome.first_request_at - t0, 3)
        if outcome.last_answer_at:
            run["timings"]["last_answer_s"] = round(outcome.last_answer_at - t0, 3)
        if kind == "worker" and sb.alive():
            try:
                work_commit = _harvest(repo, sb, ws, base, run_id, cfg["harvest"], log)
            except HarvestRefused as e:
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
    """What killed spawns of this repository left: never another repository's."""
    from . import sandbox, workspace
    try:
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


def _claim(store: IssueStore, issue: dict, actor: str) -> dict:
    """Take the issue: claim it when open; accept it when already claimed (the pipeline
    `next --claim | factory-spawn` hands it over claimed), under the claim it was handed."""
    current = store.get(issue["id"])
    if current["state"] == "claimed":
        handed = issue.get("claim_token")
        if handed and handed != current.get("claim_token"):
            raise NotRun(f"issue '{current['id']}' was claimed again since it was handed over "
                         f"(now by {current.get('claimed_by')}); nothing was run")
        return current
    try:
        return store.claim(current["id"], actor)
    except NotClaimable as e:
        raise NotRun(str(e))


class HarvestRefused(Exception):
    """The agent's work cannot become a branch as it is; the message says why."""


# The agent's checkout: a repository on the /workspace tmpfs whose objects are borrowed
# from the host's store, mounted read-only (git alternates): nothing is copied, and
# nothing the agent does can reach the host's files. Only the branch ref is made. The
# harvest's exclude list goes into info/exclude, so that the agent's own `git add -A`
# leaves caches out of its commits too. $1 branch, $2 base, $3 exclude list.
CHECKOUT_SCRIPT = r"""
set -eu
git init -q -b "$1" /workspace/repo
cd /workspace/repo
echo /factory/objects > .git/objects/info/alternates
printf '%s\n' "$3" >> .git/info/exclude
git update-ref "refs/heads/$1" "$2"
git reset -q --hard
"""

# The harvest reads the agent's work with a git dir and config of its own: the agent's
# .git/config, attributes drivers, hooks, fsmonitor, pager or editor never run, and
# HOME and XDG_CONFIG_HOME point at a fresh directory so no file the agent planted is
# read as a global config. Leftover changes go into one more commit; files the
# repository ignores, and the harvest's exclude list, stay out unless the base had them.
# The bundle goes to stdout, where the host reads it; nothing is left in the container.
# $1 base, $2 run id, $3 the exclude list (one pattern per line).
HARVEST_SCRIPT = r"""
set -eu
base=$1
h=$(mktemp -d /tmp/.factory-harvest.XXXXXXXX)
export HOME="$h" XDG_CONFIG_HOME="$h" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
       GIT_LITERAL_PATHSPECS=1 GIT_OPTIONAL_LOCKS=0
git init -q --bare "$h/git"
printf '%s\n' /workspace/repo/.git/objects /factory/objects > "$h/git/objects/info/alternates"
printf '%s\n' "$3" > "$h/exclude"
g() { git --git-dir="$h/git" --work-tree=/workspace/repo -c core.excludesFile="$h/exclude" \
          -c core.attributesFile=/dev/null -c core.hooksPath=/dev/null "$@"; }
# The agent's HEAD, read as files: resolving it with git would read the agent's config.
d=/workspace/repo/.git
head=
if [ -f "$d/HEAD" ]; then
  read -r line < "$d/HEAD" || true
  case "$line" in
    "ref: "*) name=${line#ref: }
              if [ -f "$d/$name" ]; then read -r head < "$d/$name" || true
              elif [ -f "$d/packed-refs" ]; then
                while read -r oid ref; do [ "$ref" = "$name" ] && head=$oid; done < "$d/packed-refs"
              fi ;;
    *) head=$line ;;
  esac
fi
case "$head" in
  *[!0-9a-f]*|"") head=$base ;;  # not an object id: the work is what the files say
esac
g cat-file -e "$head^{commit}" 2>/dev/null || head=$base
export GIT_INDEX_FILE="$h/index"
g read-tree "$head"
g add -A
declare -A added=()
while IFS= read -r -d '' p; do added["$p"]=1; done < <(g diff --cached --name-only --no-renames --diff-filter=A -z "$base")
: > "$h/drop"
while IFS= read -r -d '' p; do
  if [ -n "${added[$p]:-}" ]; then printf '%s\0' "$p" >> "$h/drop"; fi
done < <(g ls-files -z --cached --ignored --exclude-standard)
if [ -s "$h/drop" ]; then g rm -q --cached --pathspec-from-file="$h/drop" --pathspec-file-nul; fi
tree=$(g write-tree)
if [ "$tree" != "$(g rev-parse "$head^{tree}")" ]; then
  head=$(g commit-tree "$tree" -p "$head" -m "factory: work left uncommitted by run $2")
fi
if [ "$head" = "$base" ]; then exit 0; fi
g update-ref refs/heads/result "$head"
g bundle create -q - "$base..refs/heads/result"
"""


def _check_out(sb, base: str, branch: str, excludes: list[str]) -> None:
    from .agent import ToolsUnavailable
    r = sb.exec(f"bash -c {_sq(CHECKOUT_SCRIPT)} checkout {_sq(branch)} {base} {_sq(chr(10).join(excludes))}",
                timeout=300, workdir="/workspace")
    if r.exit_code != 0:
        raise ToolsUnavailable(f"could not check out {base[:12]} in the container: {r.output.strip()[-500:]}")


class _Background(threading.Thread):
    """fn(*args) in a thread; wait() joins it and raises what it raised, once."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.error = fn, args, None
        self.start()

    def run(self):
        try:
            self.fn(*self.args)
        except BaseException as e:  # raised again in the caller's thread
            self.error = e

    def wait(self):
        self.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _sq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _harvest(repo: Repo, sb, ws, base: str, run_id: str, harvest_cfg: dict, log) -> str | None:
    """Bundle what the agent left inside the container, stream the bundle to a host-only
    file and unbundle it into the host's repository: objects only, no ref moves (that
    is the landing's). Returns the work's commit, None when there is none; raises
    HarvestRefused when the work may not become a branch."""
    from .config import parse_size
    limit = parse_size(harvest_cfg["max_bytes"])
    excludes = chr(10).join(harvest_cfg["exclude"])
    r = sb.exec_to_file(f"bash -c {_sq(HARVEST_SCRIPT)} harvest {base} {_sq(run_id)} {_sq(excludes)}",
                        ws.bundle, max_bytes=limit, timeout=300, workdir="/workspace")
    if r.over:
        raise HarvestRefused(f"the agent's work is over harvest.max_bytes ({harvest_cfg['max_bytes']}) "
                             "as a git bundle")
    if r.exit_code != 0:
        raise HarvestRefused(f"the agent's work could not be bundled: {r.stderr.strip()[-500:] or f'exit {r.exit_code}'}")
    if r.bytes == 0:
        return None
    heads = repo.unbundle(ws.bundle)
    commit = heads.get("refs/heads/result")
    if commit is None:
        raise HarvestRefused("the bundle carries no result")
    if not repo.is_ancestor(base, commit):
        raise HarvestRefused("the agent's work does not descend from where it started")
    found = _secrets_in(repo, base, commit)
    if found:
        raise HarvestRefused("the work adds secret-shaped strings (" + "; ".join(found[:5]) + "); "
                             "no ref was moved")
    log(f"harvest: {commit[:12]}")
    return commit


def _secrets_in(repo: Repo, base: str, commit: str) -> list[str]:
    """Where the agent's new commits add something secret-shaped, as `TYPE in PATH:LINE`."""
    from .secretscan import scan_commits
    out = []
    for f in scan_commits(repo, base, commit):
        if f["where"] == "message":
            where = "its message"
        elif f["where"] == "name":
            where = f"the name of {f['path']}"
        else:
            where = f"{f['path']}:{f['line']}"
        out.append(f"{f['type']} in {where}, commit {f['commit'][:12]}")
    return out


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
