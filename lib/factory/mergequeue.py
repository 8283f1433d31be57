"""The merge queue: main moves only to a tree that was tested as exactly that tree.

One issue at a time: read where main is, judge the branch merged into exactly that commit
(gate.judge), and move main from that commit to the tested one by compare-and-swap. If
main moved meanwhile, the swap fails and the issue is judged again on the new main; main
never gets a tree that was not tested. A checked-out main moves only together with its
clean work tree (git's updateInstead, Repo.advance_branch); a dirty one makes the merge
wait, and nothing of the user's is touched. A refusal goes to the issue like any
verdict (gate.settle): back to a worker, the verdict and any conflict attached.
"""

from __future__ import annotations

from . import gate
from .gitstore import RefConflict, WorkTreeBusy
from .issues import IssueStore, make_event

MAX_RETESTS = 5   # main moved under the test this many times in a row: give up for now


class NotMergeable(Exception):
    """The issue is not one the queue can merge now (not in review, no branch)."""


def merge_issue(repo, cfg: dict, issue_id: str, *, actor: str, log=None, ref: str | None = None) -> dict:
    """Merge one issue's branch through the gate. Returns {"issue", "merged": bool,
    "verdict": the last verdict or None, "waiting": why it waits or None, "commit": where
    main is now}."""
    log = log or (lambda msg: None)
    store = IssueStore(repo)
    ref = ref or gate.default_ref(repo)
    result = {"issue": issue_id, "merged": False, "verdict": None, "waiting": None, "commit": None}
    for _ in range(MAX_RETESTS):
        issue = store.get(issue_id)
        if issue["state"] != "review" or not issue.get("branch"):
            raise NotMergeable(f"issue {issue['id']} is {issue['state']}"
                               + ("" if issue.get("branch") else " with no branch")
                               + "; only an issue in review with a branch can be merged")
        busy = repo.worktree_busy(ref)
        if busy:
            result["waiting"] = busy
            return result
        old = repo.resolve(ref)
        head = repo.resolve("refs/heads/" + issue["branch"])
        if head and old and repo.is_ancestor(head, old):
            # Already on main (an earlier merge landed, then its issue was not closed).
            _mark_done(store, issue, head, old, actor, "its branch is already on " + ref)
            result.update(merged=True, commit=old)
            return result
        verdict = gate.judge(repo, cfg, issue, ref=ref, base=old, log=log)
        result["verdict"] = verdict
        if verdict["verdict"] != "pass":
            try:
                gate.settle(store, verdict, cfg["budgets"], actor)
            except gate.Stale as e:
                log(f"not settled: {e}")
            return result
        try:
            repo.advance_branch(ref, old, verdict["merge"])
        except RefConflict:
            log(f"{ref} moved while {issue_id} was tested; testing it again on the new {ref}")
            continue
        except WorkTreeBusy as e:
            result["waiting"] = str(e)
            try:
                gate.settle(store, verdict, cfg["budgets"], actor)
            except gate.Stale:
                pass
            return result
        log(f"merged {issue['branch']} into {ref}: {verdict['merge'][:12]}")
        try:
            gate.settle(store, verdict, cfg["budgets"], actor,
                        extra=lambda cur, last: _done_events(actor, last, ref, verdict["merge"]))
        except gate.Stale:
            _mark_done(store, issue, head, verdict["merge"], actor, f"merged into {ref}")
        result.update(merged=True, commit=verdict["merge"])
        return result
    result["waiting"] = f"{ref} moved {MAX_RETESTS} times while this branch was tested; it is tried again later"
    return result


def _done_events(actor: str, last: str, ref: str, commit: str) -> list[dict]:
    ev = make_event("set", actor, after=last, fields={"state": "done"})
    return [ev, make_event("comment", actor, after=ev["at"], text=f"merged into {ref} at {commit[:12]}")]


def _mark_done(store: IssueStore, issue: dict, head, commit: str, actor: str, why: str) -> None:
    def events(cur, last):
        if cur["state"] != "review":
            return []
        ev = make_event("set", actor, after=last, fields={"state": "done"})
        return [ev, make_event("comment", actor, after=ev["at"], text=f"done: {why} ({commit[:12]})")]
    store.change(issue["id"], events)
