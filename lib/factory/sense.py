"""One sense run: a sensor or an adversary looks at its targets, what it saw becomes
findings, reproductions are re-run before anything is believed, findings are filed once
per signature, fixes it no longer sees are closed as verified, and the run is recorded.

The rules, after ClusterFuzz and syzbot:
- reproduction gate: a finding with a reproduction is believed only if the command exits
  non-zero on the target, in a fresh container; on a review branch it must also pass on
  the branch's base, else the problem is main's and the finding is main's. An adversary's
  finding that does not reproduce is dropped and counted, never filed; a sensor's keeps
  its finding but loses the reproduction that did not fail.
- one signature, one issue: filing goes through the store's signatures (issues.py).
- verified fixed: an issue of this source and target that is `done` and that this run
  no longer sees (its reproduction now passes, or, without one, the run covered every
  finding it could make: a test suite that ran to the end) is closed, label
  verified-fixed, with a comment naming the run.
- regressions: the store opens them when a verified-fixed signature is seen again.

Model output (a model's findings, a command's output) is data: it is validated as a
finding and only ever printed, filed as issue text or run in a sandbox.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import checkrun, contracts, runs, sensors
from .contracts import now_iso
from .gate import default_ref, detect_test_command
from .issues import VERIFIED_LABEL, IssueError, IssueStore, make_event
from .redact import Redactor

REPRO_TIMEOUT_S = 300
COMMAND_TIMEOUT_S = 1800
OUTPUT_LIMIT = 256 * 1024      # what a command sensor's output may be, for its parser
CANNOT_RUN = (126, 127)       # a reproduction that cannot run shows no problem of the code
NOT_USEFUL_LABEL = "not-useful"


class SenseError(Exception):
    """The source could not look at all (no engine, no image, no model key): the
    factory's trouble; nothing was filed and no run was recorded."""


@dataclass
class Target:
    name: str             # main, or a review branch factory/<id>
    commit: str
    base: str | None      # a review branch's base (its merge base with main), else None
    main: str             # the default branch's short name


def targets(repo, store: IssueStore, source: sensors.Source) -> list[Target]:
    ref = default_ref(repo)
    main = ref.removeprefix("refs/heads/")
    tip = repo.resolve(ref)
    if tip is None:
        raise SenseError(f"{ref} has no commit yet; commit something first")
    if source.target == "main":
        return [Target(main, tip, None, main)]
    out = []
    for issue in store.all():
        branch = issue.get("branch")
        head = repo.resolve(f"refs/heads/{branch}") if issue["state"] == "review" and branch else None
        if head:
            out.append(Target(branch, head, repo.merge_base(tip, head), main))
    return out


# -- looking ------------------------------------------------------------------------------

def _command_of(repo, cfg, source, target) -> str | None:
    if source.command:
        return source.command
    if source.parser == "tests":
        if cfg["gate"]["checks"]:
            return " && ".join(f"( {c} )" for c in cfg["gate"]["checks"])
        return detect_test_command(repo, target.commit)[0]
    return None


def observe_command(repo, cfg, source, target, log) -> tuple[list[dict], bool, dict]:
    """(findings, covered, what ran) of a command sensor on one target."""
    command = _command_of(repo, cfg, source, target)
    if command is None:
        return [], False, {"command": None, "note": "no test command found; set gate.checks in factory.yaml"}
    try:
        (r,) = checkrun.run_checks(repo, cfg, target.commit, [{"name": source.name, "command": command}],
                                   timeout_s=COMMAND_TIMEOUT_S, log=log, kind=source.kind,
                                   output_limit=OUTPUT_LIMIT)
    except checkrun.CheckRunError as e:
        raise SenseError(str(e))
    ran = {"command": command, "exit_code": r["exit_code"], "timed_out": r["timed_out"], "seconds": r["seconds"]}
    output = r["output_tail"]
    if source.parser == "tests":
        found, covered = sensors.findings_from_tests(output, None if r["timed_out"] else r["exit_code"])
    elif source.map:
        found = sensors.findings_from_map(source.name, source.map, output)
        covered = r["exit_code"] is not None and not r["timed_out"]
    else:
        found = sensors.findings_from_exit(source.name, output, r["exit_code"])
        covered = r["exit_code"] is not None and not r["timed_out"]
    return found[:sensors.MAX_FINDINGS_PER_RUN], covered, ran


def observe_model(repo, cfg, source, target, log, run_id, n=0) -> tuple[list[dict], bool, dict]:
    """(findings, covered, what ran) of a model sensor or adversary: an agent in its own
    container on the target (the n-th of this run), reporting with report_finding. A model
    is never exhaustive: its run covers nothing, and its fixes are verified by their
    reproductions alone. What ran counts the report_finding calls the agent refused as
    malformed (findings_refused)."""
    from . import spawn
    task = {"kind": source.kind, source.kind: {"name": source.name, "prompt": source.prompt},
            "ref": target.commit, "budgets": {}}
    agent_run = f"{run_id}-agent" + (f"-{n}" if n else "")  # one agent per target
    run = spawn.run_task(contracts.validate_task(task), repo, cfg,
                         log=spawn.Log(echo=False, tool="factory-sense"), run_id=agent_run)
    if run.get("infra"):
        raise SenseError(f"the {source.kind} agent could not run: {run.get('reason')}")
    if run["status"] != "ok":  # it looked, but not to its end: what it reported still counts
        log(f"{source.source}: the agent on {target.name} ended {run['status']}: {run.get('reason')} "
            f"(its record: refs/factory/runs/{run['run']})")
    found = []
    for f in run.get("findings") or []:
        if not isinstance(f, dict):
            f = {"title": f}  # not a finding: validation counts it invalid
        f = dict(f)
        fp = str(f.get("fingerprint") or "")
        f["fingerprint"] = fp if fp.startswith(f"{source.name}:") else f"{source.name}:{fp}"
        found.append(f)
    return found[:sensors.MAX_FINDINGS_PER_RUN], False, {"agent_run": run["run"], "status": run["status"],
                                                        "reason": run.get("reason"),
                                                        "findings_refused": run.get("findings_refused", 0)}


# -- believing ----------------------------------------------------------------------------

def reproduce(repo, cfg, commit: str, command: str, kind: str, log) -> dict:
    """Run a reproduction at the top of `commit` in a fresh container: {exit_code,
    timed_out, fails, output_tail}. fails: it exited non-zero for a reason of the code
    (not 126/127: a command that cannot run shows nothing)."""
    try:
        (r,) = checkrun.run_checks(repo, cfg, commit, [{"name": "reproduction", "command": command}],
                                   timeout_s=REPRO_TIMEOUT_S, log=log, kind=kind)
    except checkrun.CheckRunError as e:
        raise SenseError(str(e))
    code = r["exit_code"]
    return {"exit_code": code, "timed_out": r["timed_out"], "output_tail": r["output_tail"][-2000:],
            "fails": code is not None and code != 0 and code not in CANNOT_RUN}


def confirm(repo, cfg, source, target, finding: dict, log) -> tuple[dict | None, str | None]:
    """(the finding as believed, or None; why it was dropped)."""
    if source.quotes:  # the source must quote what it is about: checked here, not trusted
        files = {}
        for prefix in source.quotes:
            files.update(repo.read_tree(target.commit, prefix))
        said = f"{finding['body']}\n{finding['evidence']}"
        if sensors.quoted_line(said, sensors.quotable_lines(files)) is None:
            return None, (f"it quotes no line of {' or '.join(source.quotes)} at {target.commit[:12]} "
                          "(a finding must quote, exactly, the line it is about)")
    repro = finding.get("reproduction")
    if not repro:
        if source.kind == "adversary":
            return None, "no reproduction"
        return finding, None
    on_target = reproduce(repo, cfg, target.commit, repro, source.kind, log)
    if not on_target["fails"]:
        why = (f"its reproduction exits {on_target['exit_code']} on {target.name}"
               + (" (timed out)" if on_target["timed_out"] else "")
               + (": it cannot run there (not found, or not executable in a fresh checkout)"
                  if on_target["exit_code"] in CANNOT_RUN else ""))
        if source.kind == "adversary":
            return None, why
        return dict(finding, reproduction=None, evidence=(finding.get("evidence") or "")
                    + f"\n[factory: the reported reproduction was dropped: {why}]"), None
    confirmed = {"exit_code": on_target["exit_code"], "commit": target.commit, "base_exit_code": None}
    if target.base:
        on_base = reproduce(repo, cfg, target.base, repro, source.kind, log)
        confirmed["base_exit_code"] = on_base["exit_code"]
        if on_base["fails"]:  # the branch did not bring it: it is main's
            return dict(finding, target=target.main, commit=target.base, confirmed=confirmed), None
    return dict(finding, confirmed=confirmed), None


# -- one run --------------------------------------------------------------------------------

def run_source(repo, cfg, store: IssueStore, source: sensors.Source, *, file: bool, actor: str,
               log=lambda msg: None) -> dict:
    """Run one source on each of its targets; return the run JSON (recorded in git).
    Its `findings` are the believed findings, each valid by contracts.validate_finding."""
    run_id = runs.new_run_id()
    started = now_iso()
    counts = {"seen": 0, "filed": 0, "duplicate": 0, "dropped": 0, "invalid": 0, "verified_fixed": 0,
              "regressions": 0}
    findings, dropped, looked, verified, issues = [], [], [], [], []
    redactor = Redactor()  # what a command printed may hold a secret: masked before it goes anywhere
    for n, target in enumerate(targets(repo, store, source)):
        if source.is_model:
            raw, covered, ran = observe_model(repo, cfg, source, target, log, run_id, n)
            counts["invalid"] += ran["findings_refused"]
        else:
            raw, covered, ran = observe_command(repo, cfg, source, target, log)
        seen = set()
        for f in raw:
            counts["seen"] += 1
            f = redactor.clean(f)
            try:
                f = contracts.validate_finding({**{k: v for k, v in f.items() if k in contracts.FINDING_FIELDS},
                                                "source": source.source, "target": target.name,
                                                "commit": target.commit, "run": run_id})
            except contracts.ContractError as e:
                counts["invalid"] += 1
                log(f"{source.source}: a finding was not valid and is ignored: {e}")
                continue
            seen.add(f["fingerprint"])  # seen, even if it does not reproduce now: not fixed
            believed, why = confirm(repo, cfg, source, target, f, log)
            if believed is None:
                counts["dropped"] += 1
                dropped.append({"title": f["title"], "fingerprint": f["fingerprint"], "why": why})
                log(f"{source.source}: dropped {f['title']!r}: {why}")
                continue
            findings.append(contracts.validate_finding(believed))
        looked.append({"target": target.name, "commit": target.commit, "base": target.base, "covered": covered,
                       **ran})
        if file:
            verified += verify_fixed(repo, cfg, store, source, target, seen, covered, run_id, actor, log)
    if file and findings:
        drafts = [contracts.validate_draft(f) for f in findings]
        for issue, filed in store.file(drafts, actor, dedupe=True):
            counts["filed" if filed else "duplicate"] += 1
            if filed and "regression" in issue["labels"]:
                counts["regressions"] += 1
            issues.append({"id": issue["id"], "fingerprint": issue["fingerprint"], "filed": filed,
                           "state": issue["state"]})
    counts["verified_fixed"] = len(verified)
    # An agent that ended in error did not look to its end: its findings are used, but
    # the run is an error (factory-sense exits non-zero), not a clean bill of health.
    cut = [f"the agent on {x['target']} ended in error: {x['reason']}" for x in looked if x.get("status") == "error"]
    run = {"v": 1, "run": run_id, "kind": source.kind, "source": source.source, "name": source.name,
           "status": "error" if cut else "ok", "reason": "; ".join([_summary(source, counts, file), *cut]),
           "filed": file, "looked": looked,
           "findings": findings, "dropped": dropped, "issues": issues, "verified_fixed": verified,
           "counts": counts, "started": started, "ended": now_iso()}
    run["record"] = runs.record(repo, run, [], "", redactor)
    return run


def _summary(source, counts, file) -> str:
    c = counts
    text = f"{source.source}: saw {c['seen']}, dropped {c['dropped']} unconfirmed, {c['invalid']} invalid"
    if file:
        text += (f", filed {c['filed']} ({c['regressions']} regressions), {c['duplicate']} duplicates, "
                 f"{c['verified_fixed']} verified fixed")
    return text


def verify_fixed(repo, cfg, store, source, target, seen: set, covered: bool, run_id: str, actor: str,
                 log) -> list[str]:
    """Close as verified fixed every done issue of this source and target that this run no
    longer sees: its reproduction passes on the target, or, without one, the run covered
    it. Returns the ids closed."""
    closed = []
    for issue in store.all():
        if (issue["source"] != source.source or issue["state"] != "done" or VERIFIED_LABEL in issue["labels"]
                or not issue.get("fingerprint") or issue["fingerprint"] in seen
                or _target_of(issue, target.main) != target.name):
            continue
        repro = contracts.reproduction_of(issue["body"])
        if repro:
            r = reproduce(repo, cfg, target.commit, repro, source.kind, log)
            if r["fails"] or r["exit_code"] in CANNOT_RUN or r["exit_code"] is None:
                continue  # still there, or not shown gone
            how = f"its reproduction now exits {r['exit_code']}"
        elif covered:
            how = "the run covered it and no longer sees it"
        else:
            continue
        text = (f"verified fixed: run {run_id} ({source.source}) on {target.name} at {target.commit[:12]}: {how} "
                f"(record: refs/factory/runs/{run_id})")

        def events(cur, last, text=text):
            if cur["state"] != "done" or VERIFIED_LABEL in cur["labels"]:
                return []  # it moved meanwhile: not ours to close
            ev1 = make_event("comment", actor, after=last, text=text)
            ev2 = make_event("labels", actor, after=ev1["at"], add=[VERIFIED_LABEL], remove=[])
            return [ev1, ev2, make_event("set", actor, after=ev2["at"], fields={"state": "closed"})]
        try:
            after = store.change(issue["id"], events)
        except IssueError as e:
            log(f"{issue['id']}: could not be closed as verified fixed: {e}")
            continue
        if VERIFIED_LABEL in after["labels"]:
            closed.append(issue["id"])
            log(f"{issue['id']}: verified fixed ({how})")
    return closed


def _target_of(issue: dict, main: str) -> str:
    for label in issue["labels"]:
        if label.startswith("target:"):
            return label[len("target:"):]
    return main


# -- precision ----------------------------------------------------------------------------

MIN_FINDINGS_TO_MUTE = 5   # a source is judged only once it has made this many findings


def precision(repo, store: IssueStore, issues: list[dict] | None = None) -> dict[str, dict]:
    """Per source (sensor:NAME, adversary:NAME), from git alone: filed (its issues),
    dropped (unconfirmed findings, from its run records), not_useful (its issues a person
    closed with the label not-useful), and precision = useful / (filed + dropped), or
    None before it made any finding."""
    out: dict[str, dict] = {}

    def row(src):
        return out.setdefault(src, {"filed": 0, "dropped": 0, "not_useful": 0, "runs": 0, "precision": None})
    for i in issues if issues is not None else store.all():
        if contracts.FINDING_SOURCE_RE.match(i["source"]):
            r = row(i["source"])
            r["filed"] += 1
            if NOT_USEFUL_LABEL in i["labels"] and i["state"] == "closed":
                r["not_useful"] += 1
    recs = [oid for oid, kind, _ in repo.typed_refs(runs.RUNS_PREFIX) if kind == "commit"]
    for blob in repo.cat_batch([f"{oid}:run.json" for oid in recs]):
        try:
            rec = json.loads(blob[2]) if blob and blob[1] == "blob" else None
        except ValueError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("counts"), dict) or "source" not in rec:
            continue
        src = rec["source"]
        if isinstance(src, str) and contracts.FINDING_SOURCE_RE.match(src):
            r = row(src)
            r["runs"] += 1
            dropped = rec["counts"].get("dropped")
            r["dropped"] += dropped if isinstance(dropped, int) and dropped > 0 else 0
    for r in out.values():
        total = r["filed"] + r["dropped"]
        r["precision"] = round((r["filed"] - r["not_useful"]) / total, 3) if total else None
    return out


def muted(stats: dict, min_precision: float) -> str | None:
    """Why a source with these counts is muted, or None."""
    total = stats["filed"] + stats["dropped"]
    if total >= MIN_FINDINGS_TO_MUTE and stats["precision"] is not None and stats["precision"] < min_precision:
        return (f"muted: precision {stats['precision']:.2f} is below sense.min_precision {min_precision:g} "
                f"({stats['filed']} filed, {stats['not_useful']} closed not-useful, {stats['dropped']} dropped "
                "unconfirmed); run it by name to try it anyway, or fix its definition")
    return None
