"""The git-native issue store: one ref per issue, one commit per event.

`refs/factory/issues/<id>` points at the issue's newest event. Each commit holds the
event in its message (after a one-line summary, so `git log` of the ref reads as the
issue's history) and the issue as it stands after that event in `issue.json`, so reading
an issue is one object read and listing N issues is two git processes.

Every change is a new commit whose parent is the commit read, moved into place with a
compare-and-swap; a lost swap re-reads and re-applies. Events carry a time that never
goes backwards along a history (max(now, parent + 1us)), so the state is always the fold
of the events sorted by (time, event id): two clones that changed the same issue merge by
folding the union of their events, whichever clone does it, losing neither.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone

from . import contracts, hidden
from .contracts import ContractError, now_iso
from .gitstore import NewCommit, RefConflict, Repo, retry_cas

ISSUES_PREFIX = "refs/factory/issues/"
ISSUE_FILE = "issue.json"


class IssueError(Exception):
    """A request about issues that cannot be met; the message says what to do."""


class NoSuchIssue(IssueError):
    pass


class NotClaimable(IssueError):
    """claim lost: the issue is not open (someone else claimed it, or it is finished)."""


def new_id() -> str:
    return os.urandom(6).hex()


def default_actor() -> str:
    return os.environ.get("FACTORY_ACTOR") or f"human:{os.environ.get('USER') or 'unknown'}"


def _after(t: str) -> str:
    """The next representable time after t (1 microsecond later)."""
    dt = datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return (dt + timedelta(microseconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(type_: str, actor: str, after: str | None = None, **data) -> dict:
    at = now_iso()
    if after and at <= after:
        at = _after(after)
    return {"v": 1, "id": os.urandom(8).hex(), "at": at, "actor": actor, "type": type_, **data}


# -- the fold ------------------------------------------------------------------------

def apply_event(issue: dict | None, ev: dict) -> dict:
    """The issue after one event. Pure: the same events in the same order give the same issue."""
    t = ev["type"]
    if t == "filed":
        f = ev["fields"]
        return {
            "v": contracts.ISSUE_VERSION, "id": ev["issue"], "title": f["title"], "body": f["body"],
            "state": "open", "kind": f["kind"], "labels": list(f["labels"]), "priority": f["priority"],
            "fingerprint": f["fingerprint"], "source": f["source"], "trust": f["trust"],
            "depends_on": list(f["depends_on"]), "attempts": 0, "branch": None, "runs": [],
            "claimed_by": None, "claim_token": None, "not_before": None, "comments": [],
            "created": ev["at"], "updated": ev["at"],
        }
    if issue is None:
        raise ValueError(f"event {ev['id']} ({t}) comes before the issue was filed")
    issue = dict(issue)
    if t == "set":
        for k, v in ev["fields"].items():
            issue[k] = v
        if ev["fields"].get("state") == "open":
            issue["claimed_by"] = ev["fields"].get("claimed_by")
        if ev["fields"].get("state", "claimed") != "claimed":
            issue["claim_token"] = None  # a claim ends with its state: its token is spent
    elif t == "labels":
        labels = [x for x in issue["labels"] if x not in ev.get("remove", [])]
        labels += [x for x in ev.get("add", []) if x not in labels]
        issue["labels"] = labels
    elif t == "comment":
        issue["comments"] = issue["comments"] + [{"at": ev["at"], "author": ev["actor"], "text": ev["text"]}]
    elif t == "claim":
        issue["state"] = "claimed"
        issue["claimed_by"] = ev["actor"]
        issue["claim_token"] = ev.get("token")
    elif t == "runs":
        issue["runs"] = issue["runs"] + [r for r in ev["add"] if r not in issue["runs"]]
    else:
        raise ValueError(f"unknown event type {t!r}")
    issue["updated"] = ev["at"]
    return issue


def fold(events: list[dict]) -> dict:
    issue = None
    for ev in sorted(events, key=lambda e: (e["type"] != "filed", e["at"], e["id"])):
        issue = apply_event(issue, ev)
    return issue


def _message(ev: dict) -> str:
    return f"{ev['type']} {ev.get('issue') or ''}".rstrip() + "\n\n" + json.dumps(ev, sort_keys=True) + "\n"


def _event_of(message: str) -> dict | None:
    _, _, body = message.partition("\n\n")
    body = body.strip()
    return json.loads(body) if body.startswith("{") else None  # merge commits carry no event


def _issue_blob(issue: dict) -> bytes:
    return json.dumps(issue, sort_keys=True, separators=(",", ":")).encode()


class IssueStore:
    def __init__(self, repo: Repo):
        self.repo = repo

    # -- reading -------------------------------------------------------------------

    def all(self) -> list[dict]:
        """Every issue, oldest first. Two git processes, however many issues."""
        refs = self.repo.refs(ISSUES_PREFIX)
        objs = self.repo.cat_batch([f"{oid}:{ISSUE_FILE}" for oid in refs.values()])
        issues = [json.loads(o[2]) for o in objs if o is not None]
        issues.sort(key=lambda i: (i["created"], i["id"]))
        return issues

    def resolve(self, id_or_prefix: str) -> str:
        """The full id for a unique prefix. A full id is returned unchecked (no process):
        `read` and `get` are what say whether it exists."""
        if not isinstance(id_or_prefix, str) or not contracts.ID_PREFIX_RE.match(id_or_prefix):
            raise NoSuchIssue(f"'{id_or_prefix}' is not an issue id (ids are hex, such as 7f3a; "
                              "try: factory-issue list)")
        if contracts.ID_RE.match(id_or_prefix):
            return id_or_prefix
        matches = [r[len(ISSUES_PREFIX):] for r in self.repo.refs(f"{ISSUES_PREFIX}{id_or_prefix}*")]
        if not matches:
            raise NoSuchIssue(f"no issue '{id_or_prefix}' in {ISSUES_PREFIX.rstrip('/')} (try: factory-issue list)")
        if len(matches) > 1:
            raise NoSuchIssue(f"'{id_or_prefix}' matches {len(matches)} issues ({', '.join(sorted(matches)[:5])}); "
                              "give more of the id")
        return matches[0]

    def read(self, issue_id: str) -> tuple[dict, str]:
        """(issue, commit) as they stand now."""
        head = self.repo.cat_batch([f"{ISSUES_PREFIX}{issue_id}", f"{ISSUES_PREFIX}{issue_id}:{ISSUE_FILE}"])
        if head[0] is None or head[1] is None:
            raise NoSuchIssue(f"no issue '{issue_id}' in {ISSUES_PREFIX.rstrip('/')} (try: factory-issue list)")
        return json.loads(head[1][2]), head[0][0]

    def get(self, id_or_prefix: str) -> dict:
        return self.read(self.resolve(id_or_prefix))[0]

    def history(self, issue_id: str) -> list[dict]:
        """The issue's events in the order they take effect."""
        events = [e for _, _, m in self.repo.log_messages(ISSUES_PREFIX + issue_id) if (e := _event_of(m))]
        return sorted(events, key=lambda e: (e["type"] != "filed", e["at"], e["id"]))

    # -- filing --------------------------------------------------------------------

    def file(self, drafts: list[dict], actor: str, dedupe: bool = False) -> list[tuple[dict, bool]]:
        """File validated drafts in one transaction: all or none. Returns (issue, filed) per
        draft; with dedupe, a draft whose fingerprint matches an active issue (or an earlier
        draft) is not filed and its match is returned with filed=False."""
        def attempt():
            existing = {}
            if dedupe and any(d["fingerprint"] for d in drafts):
                for i in self.all():
                    if i["fingerprint"] and i["state"] in contracts.ACTIVE_STATES:
                        existing.setdefault(i["fingerprint"], i)
            results, commits, new_issues = [], [], []
            for d in drafts:
                d = hidden.flag_draft(d, contracts.MAX_LABELS)  # text a person cannot see gets a label they can
                if dedupe and d["fingerprint"] and d["fingerprint"] in existing:
                    results.append((existing[d["fingerprint"]], False))
                    continue
                ev = make_event("filed", actor, issue=new_id(), fields=d)
                issue = apply_event(None, ev)
                commits.append(NewCommit({ISSUE_FILE: _issue_blob(issue)}, _message(ev)))
                new_issues.append(issue)
                results.append((issue, True))
                if dedupe and d["fingerprint"]:
                    existing[d["fingerprint"]] = issue
            oids = self.repo.write_commits(commits)
            self.repo.update_refs([(ISSUES_PREFIX + i["id"], oid, None) for i, oid in zip(new_issues, oids)])
            return results
        return retry_cas(attempt)

    # -- changing ------------------------------------------------------------------

    def change(self, id_or_prefix: str, events_for, also=None) -> dict:
        """Apply the events `events_for(issue, last_event_time)` returns, as one compare-and-swap
        per event batch, retried on conflict. events_for may raise to refuse the change.
        `also(issue)` may name more ref updates [(ref, new, expected old)] that must move in
        the same transaction, all or none (a run's branch moves only with its issue)."""
        issue_id = self.resolve(id_or_prefix)

        def attempt():
            issue, head = self.read(issue_id)
            extra = also(issue) if also else []
            events = events_for(issue, issue["updated"])
            if not events:
                if extra:
                    self.repo.update_refs(extra)
                return issue
            commits = []
            for n, ev in enumerate(events):
                ev["issue"] = issue_id
                issue = apply_event(issue, ev)
                parent = head if n == 0 else n - 1  # each event's parent is the one before
                commits.append(NewCommit({ISSUE_FILE: _issue_blob(issue)}, _message(ev), parents=[parent]))
            oids = self.repo.write_commits(commits)
            self.repo.update_refs([(ISSUES_PREFIX + issue_id, oids[-1], head)] + extra)
            return issue
        return retry_cas(attempt)

    def claim(self, id_or_prefix: str, actor: str) -> dict:
        def events(issue, last):
            if issue["state"] != "open":
                by = f" by {issue['claimed_by']}" if issue.get("claimed_by") else ""
                raise NotClaimable(f"issue '{issue['id']}' is {issue['state']}{by}; only open issues can be claimed")
            # The token names this claim: whatever runs under it may land its work once
            # (the landing's compare-and-swap spends it), however many times it is started.
            return [make_event("claim", actor, after=last, token=os.urandom(8).hex())]
        return self.change(id_or_prefix, events)

    def update(self, id_or_prefix: str, patch: dict, actor: str) -> dict:
        def events(issue, last):
            evs = []
            fields = {k: v for k, v in patch.items()
                      if k not in ("add_labels", "remove_labels", "add_runs") and issue.get(k) != v}
            if fields:
                evs.append(make_event("set", actor, after=last, fields=fields))
                last = evs[-1]["at"]
            add = [x for x in patch.get("add_labels", []) if x not in issue["labels"]]
            remove = [x for x in patch.get("remove_labels", []) if x in issue["labels"]]
            if add or remove:
                evs.append(make_event("labels", actor, after=last, add=add, remove=remove))
                last = evs[-1]["at"]
            runs = [r for r in patch.get("add_runs", []) if r not in issue["runs"]]
            if runs:
                evs.append(make_event("runs", actor, after=last, add=runs))
            return evs
        return self.change(id_or_prefix, events)

    def comment(self, id_or_prefix: str, text: str, actor: str) -> dict:
        return self.change(id_or_prefix, lambda issue, last: [make_event("comment", actor, after=last, text=text)])

    def close(self, id_or_prefix: str, actor: str, reason: str | None = None, state: str = "closed") -> dict:
        def events(issue, last):
            evs = []
            if reason:
                evs.append(make_event("comment", actor, after=last, text=reason))
                last = evs[-1]["at"]
            if issue["state"] != state:
                evs.append(make_event("set", actor, after=last, fields={"state": state}))
            return evs
        return self.change(id_or_prefix, events)

    # -- choosing ------------------------------------------------------------------

    @staticmethod
    def ready(issues: list[dict], now: str | None = None) -> list[dict]:
        """Open issues whose dependencies are finished and whose not_before has passed,
        most urgent first, oldest first among equals."""
        now = now or now_iso()
        state = {i["id"]: i["state"] for i in issues}
        out = [i for i in issues
               if i["state"] == "open"
               and (not i.get("not_before") or i["not_before"] <= now)
               and all(state.get(d) in contracts.FINISHED_STATES for d in i.get("depends_on", []))]
        out.sort(key=lambda i: (i["priority"], i["created"], i["id"]))
        return out

    # -- merging clones ------------------------------------------------------------

    def merge(self, issue_id: str, theirs: str) -> tuple[dict, str]:
        """Bring another clone's history of an issue (commit `theirs`) into ours.

        Returns (issue, how): how is 'new', 'up-to-date', 'fast-forward' or 'merged'."""
        ref = ISSUES_PREFIX + issue_id

        def attempt():
            ours = self.repo.resolve(ref)
            if ours is None:
                self.repo.update_refs([(ref, theirs, None)])
                return self.read(issue_id)[0], "new"
            if self.repo.is_ancestor(theirs, ours):
                return self.read(issue_id)[0], "up-to-date"
            if self.repo.is_ancestor(ours, theirs):
                self.repo.update_refs([(ref, theirs, ours)])
                return self.read(issue_id)[0], "fast-forward"
            events = {}
            for _, _, msg in self.repo.log_messages(ours, theirs):
                ev = _event_of(msg)
                if ev:
                    events[ev["id"]] = ev
            issue = fold(list(events.values()))
            oid = self.repo.write_commits([NewCommit(
                {ISSUE_FILE: _issue_blob(issue)}, f"merge {issue_id}\n", parents=[ours, theirs])])[0]
            self.repo.update_refs([(ref, oid, ours)])
            return issue, "merged"
        return retry_cas(attempt)

    def pull(self, remote: str) -> list[tuple[dict, str]]:
        """Fetch a clone's issues (a remote name or URL) and merge each into ours."""
        tracking = f"refs/factory/remotes/{re.sub(r'[^A-Za-z0-9._-]+', '_', remote).strip('_.')}/issues/"
        self.repo.git("fetch", "--quiet", "--no-tags", remote, f"+{ISSUES_PREFIX}*:{tracking}*")
        results = []
        for ref, oid in sorted(self.repo.refs(tracking).items()):
            results.append(self.merge(ref[len(tracking):], oid))
        return results


__all__ = ["IssueStore", "IssueError", "NoSuchIssue", "NotClaimable", "ContractError", "RefConflict"]
