"""`factory report`: is factory getting better? Failures by root cause over time, each
lesson with its evidence and its recurrences before and after it landed, and the
postmortems whose lessons have not landed yet.

Read-only. It reads the run records (refs/factory/runs/*: gate verdicts that refused a
branch and agents' runs that failed, each named by its root cause's fingerprint as
factory-postmortem names it), the lessons on the default branch and on the pending
lesson branches (refs/heads/factory/lesson-*), and the lesson issues.
"""

from __future__ import annotations

import json
from collections import defaultdict

from . import contracts, intent, lessons, postmortem, runs
from .gitstore import Repo

SHOWN_DAYS = 10  # per root cause in the text for people; --json has them all


def failures(repo: Repo) -> list[dict]:
    """Every recorded failure, oldest first: {fingerprint, day, run, issue, source, reason}."""
    recs = [(oid, ref) for oid, kind, ref in repo.typed_refs(runs.RUNS_PREFIX) if kind == "commit"]
    out = []
    for (oid, ref), blob in zip(recs, repo.cat_batch([f"{oid}:run.json" for oid, _ in recs])):
        if not blob or blob[1] != "blob":
            continue
        try:
            kind, obj = contracts.postmortem_input(json.loads(blob[2]))
        except (ValueError, RecursionError, contracts.ContractError):
            continue  # not a run or a verdict this report understands: not counted
        if postmortem.not_a_failure(kind, obj):
            continue
        when = obj.get("ended") or obj.get("started") or ""
        day = when[:10] if isinstance(when, str) and len(when) >= 10 else _day_of_run_id(ref[len(runs.RUNS_PREFIX):])
        out.append({"fingerprint": postmortem.fingerprint_of(kind, obj), "day": day, "run": obj.get("run"),
                    "issue": obj.get("issue"), "source": kind,
                    "reason": str(obj.get("reason") or "").splitlines()[0][:200] if obj.get("reason") else ""})
    out.sort(key=lambda f: (f["day"], f["run"] or ""))
    return out


def _day_of_run_id(run_id: str) -> str:
    d = run_id[:8]  # runs.new_run_id: YYYYMMDDTHHMMSSZ-...
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if d.isdigit() else "unknown"


def all_lessons(repo: Repo, store, main_ref: str) -> list[dict]:
    """Every lesson: those on the default branch, and those pending on their lesson
    branch with an active issue (the pending version carries the newer evidence)."""
    main = repo.resolve(main_ref)
    landed = {les.fingerprint: les for les in lessons.lessons_in(repo.read_tree(main, intent.INTENT_DIR + "/"))} \
        if main else {}
    issues = {i["fingerprint"]: i for i in store.all()
              if i.get("fingerprint", "") and i["fingerprint"].startswith(lessons.ISSUE_FINGERPRINT_PREFIX)
              and i["state"] in contracts.ACTIVE_STATES}
    pending: dict[str, tuple] = {}
    for ref, tip in sorted(repo.refs("refs/heads/" + lessons.BRANCH_PREFIX + "*").items()):
        branch = ref[len("refs/heads/"):]
        if main and repo.is_ancestor(tip, main):
            continue  # merged: what it says is on main
        for lesson in lessons.lessons_in(repo.read_tree(tip, intent.INTENT_DIR + "/")):
            issue = issues.get(lessons.issue_fingerprint(lesson.fingerprint))
            if lessons.branch_for(lesson.fingerprint) == branch and issue and issue.get("branch") == branch:
                pending[lesson.fingerprint] = (lesson, branch, issue)
    out = []
    for fp in sorted(set(landed) | set(pending)):
        lesson, branch, issue = pending.get(fp) or (landed[fp], None, issues.get(lessons.issue_fingerprint(fp)))
        out.append({
            "lesson": lesson.path, "fingerprint": fp, "kind": lesson.kind, "title": lesson.title,
            "landed": fp in landed, "branch": branch, "issue": issue["id"] if issue else None,
            "postmortem": lesson.meta.get("postmortem"), "factual": bool(lesson.meta.get("factual")),
            "check": lesson.meta.get("check") if lesson.kind == "prohibition" else None,
            "evidence": lessons.evidence_of(lesson),
            "recurrences_before": lessons.count(lesson, "recurrences_before"),
            "recurrences_after": lessons.count(lesson, "recurrences_after"),
        })
    return out


def open_postmortems(store) -> list[dict]:
    """Lesson issues not yet merged: {issue, title, state, branch}."""
    return [{"issue": i["id"], "title": i["title"], "state": i["state"], "branch": i.get("branch")}
            for i in store.all() if i["source"].startswith("postmortem:") and i["state"] in contracts.ACTIVE_STATES]


def build(repo: Repo, store, main_ref: str) -> dict:
    fails = failures(repo)
    by_cause: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for f in fails:
        by_cause[f["fingerprint"]][f["day"]] += 1
    ls = all_lessons(repo, store, main_ref)
    for entry in ls:
        entry["failures"] = sum(by_cause.get(entry["fingerprint"], {}).values())
    causes = [{"fingerprint": fp, "total": sum(days.values()), "days": dict(sorted(days.items())),
               "lesson": next((les["lesson"] for les in ls if les["fingerprint"] == fp), None)}
              for fp, days in by_cause.items()]
    causes.sort(key=lambda c: (-c["total"], c["fingerprint"]))
    return {"failures": causes, "lessons": ls, "open_postmortems": open_postmortems(store),
            "records": len(fails)}


def text(r: dict) -> str:
    """The report for people."""
    out = [f"Failures by root cause ({r['records']} recorded failure(s))"]
    for c in r["failures"] or []:
        days = list(c["days"].items())
        shown = ", ".join(f"{d} {n}" for d, n in days[-SHOWN_DAYS:])
        earlier = f" (and {len(days) - SHOWN_DAYS} earlier days)" if len(days) > SHOWN_DAYS else ""
        out.append(f"  {c['fingerprint']}  {c['total']}: {shown}{earlier}")
        out.append(f"      lesson: {c['lesson'] or 'none yet'}")
    if not r["failures"]:
        out.append("  none")
    out.append("")
    out.append(f"Lessons ({len(r['lessons'])})")
    for les in r["lessons"]:
        where = "landed" if les["landed"] else "pending"
        if les["branch"]:
            where += f", update pending on {les['branch']}" if les["landed"] else f" on {les['branch']}"
        if les["issue"]:
            where += f", issue {les['issue']}"
        out.append(f"  {les['lesson']}  [{where}]")
        out.append(f"      {les['kind']}: {les['title']}" + (" (factual)" if les["factual"] else ""))
        out.append(f"      fingerprint {les['fingerprint']}; evidence {len(les['evidence'])}; recurrences before it "
                   f"landed {les['recurrences_before']}, after {les['recurrences_after']}")
        for e in les["evidence"]:
            out.append(f"        - {str(e.get('at', ''))[:19]} run {e.get('run')} issue {e.get('issue')} "
                       f"({e.get('recurrence') or 'first'})")
    if not r["lessons"]:
        out.append("  none")
    out.append("")
    out.append(f"Open postmortems ({len(r['open_postmortems'])})")
    for p in r["open_postmortems"]:
        out.append(f"  {p['issue']}  {p['state']:<7} {p['branch'] or '-'}  {p['title']}")
    if not r["open_postmortems"]:
        out.append("  none")
    return "\n".join(out)
