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

Stored data is read defensively: a ref or issue.json that is not an issue is reported
and skipped, never fatal to a reader. What another clone sends is checked whole by
peerdata before `pull` moves any ref, and trust only ever comes from this repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone

from . import contracts, hidden, peerdata
from .contracts import ContractError, now_iso
from .gitstore import ZERO, NewCommit, RefConflict, Repo, check_remote, retry_cas

ISSUES_PREFIX = "refs/factory/issues/"
ISSUE_FILE = "issue.json"
# One ref per fingerprint an active issue holds, named by the fingerprint's sha256 and
# pointing at a commit of that issue: created (expected: absent) in the same transaction
# that files the issue, deleted in the one that ends its activity. So `file --dedupe` is
# a compare-and-swap, not a read then a write: of any number of concurrent filers of one
# fingerprint, exactly one files.
FINGERPRINTS_PREFIX = "refs/factory/fingerprints/"


# A sensor's or adversary's fingerprint is a signature: one signature, one issue, until
# that issue is closed as verified fixed. refs/factory/signatures/<sha256> points at a
# commit of the signature's last issue, whatever its state, and moves (compare-and-swap)
# only when a new issue is filed for it: so a done issue that no sensor run has verified
# yet still absorbs its findings, and a finding whose issue was verified fixed opens a
# regression linked to it, once however many filers race.
SIGNATURES_PREFIX = "refs/factory/signatures/"
VERIFIED_LABEL = "verified-fixed"
REGRESSION_LABEL = "regression"
SIGNED_SOURCE_RE = re.compile(r"^(sensor|adversary):")


def fingerprint_ref(fingerprint: str, prefix: str = FINGERPRINTS_PREFIX) -> str:
    return prefix + hashlib.sha256(fingerprint.encode()).hexdigest()


def is_signed(draft: dict) -> bool:
    """Whether a draft's fingerprint is a signature (it comes from a sensor or an adversary)."""
    return bool(draft.get("fingerprint")) and bool(SIGNED_SOURCE_RE.match(draft.get("source") or ""))


def verified_closed(issue: dict) -> bool:
    return issue["state"] == "closed" and VERIFIED_LABEL in issue["labels"]


def regression_draft(draft: dict, old: dict) -> dict:
    """A finding that came back after its issue was verified fixed: a new issue, labelled
    and linked to the old one."""
    labels = list(draft["labels"])
    if REGRESSION_LABEL not in labels and len(labels) < contracts.MAX_LABELS:
        labels.append(REGRESSION_LABEL)
    link = (f"Regression of issue {old['id']} ({old['title'][:120]}), which was closed as verified fixed; "
            f"see: factory-issue show {old['id']}\n\n")
    body = link + draft["body"]
    if len(body.encode()) > contracts.MAX_BODY_BYTES:
        body = link
    return dict(draft, labels=labels, body=body)


def _active_fingerprint(issue: dict | None) -> str | None:
    """The fingerprint an issue holds: its own, while it is open, claimed or in review."""
    if issue and issue.get("fingerprint") and issue.get("state") in contracts.ACTIVE_STATES:
        return issue["fingerprint"]
    return None


class IssueError(Exception):
    """A request about issues that cannot be met; the message says what to do."""


class NoSuchIssue(IssueError):
    pass


class NotClaimable(IssueError):
    """claim lost: the issue is not open (someone else claimed it, or it is finished)."""


class DamagedIssue(IssueError):
    """The stored issue cannot be read; the message names the ref and what to do."""


def damage_message(ref: str, why: str) -> str:
    return (f"{ref}: {why}; skipped (look: git log {ref}; remove it: git update-ref -d {ref})")


def new_id() -> str:
    return os.urandom(6).hex()


def default_actor() -> str:
    from .env import get
    return get("FACTORY_ACTOR") or f"human:{os.environ.get('USER') or 'unknown'}"


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
            "claimed_by": None, "claim_token": None, "lease": None, "not_before": None, "comments": [],
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
            issue["lease"] = None
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
        issue["lease"] = ev.get("lease")
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
    if not body.startswith("{"):
        return None  # merge commits carry no event
    try:
        ev = json.loads(body)
    except (ValueError, RecursionError):
        return None  # damage is reported where the issue is read, not here
    if not isinstance(ev, dict) or not all(isinstance(ev.get(k), str) for k in ("type", "at", "id")):
        return None
    return ev


def _issue_blob(issue: dict) -> bytes:
    return json.dumps(issue, sort_keys=True, separators=(",", ":")).encode()


def _stderr(message: str) -> None:
    print(f"factory: {message}", file=sys.stderr)


def _parse_issue(ref: str, issue_id: str, obj) -> dict:
    """The issue in a `ref:issue.json` read (cat_batch's tuple), or DamagedIssue."""
    if obj is None:
        raise DamagedIssue(damage_message(ref, "its commit has no issue.json"))
    if obj[1] != "blob":
        raise DamagedIssue(damage_message(ref, f"its issue.json is a {obj[1]}, not a file"))
    try:
        issue = json.loads(obj[2])
    except (ValueError, RecursionError):
        raise DamagedIssue(damage_message(ref, "its issue.json is not JSON"))
    problem = contracts.check_stored_issue(issue, issue_id)
    if problem:
        raise DamagedIssue(damage_message(ref, problem))
    return issue


class IssueStore:
    def __init__(self, repo: Repo, warn=_stderr):
        self.repo = repo
        self.warn = warn          # where damage found while reading is reported
        self._warned: set[str] = set()
        self.damaged: set[str] = set()  # refs the last all() skipped
        self.tips: dict[str, str] = {}  # issue id -> commit, as the last all() read them

    def _report(self, ref: str, message: str) -> None:
        self.damaged.add(ref)
        if message not in self._warned:  # once per store, however often it is read
            self._warned.add(message)
            self.warn(message)

    # -- reading -------------------------------------------------------------------

    def all(self) -> list[dict]:
        """Every issue, oldest first. Two git processes, however many issues.

        No stored data makes this fail: a ref that is not an issue id, that points at
        something other than a commit, or whose issue.json is not an issue, is reported
        (once) and left out, so one bad ref cannot stop list, next or the supervisor."""
        good = []
        self.damaged = set()
        self.tips = {}
        for oid, kind, ref in self.repo.typed_refs(ISSUES_PREFIX):
            issue_id = ref[len(ISSUES_PREFIX):]
            if not contracts.ID_RE.match(issue_id):
                self._report(ref, damage_message(ref, "is not named by an issue id (12 hex digits)"))
            elif kind != "commit":
                self._report(ref, damage_message(ref, f"points at a {kind}, not a commit"))
            else:
                good.append((ref, issue_id, oid))
                self.tips[issue_id] = oid
        objs = self.repo.cat_batch([f"{oid}:{ISSUE_FILE}" for _, _, oid in good])
        issues = []
        for (ref, issue_id, _), obj in zip(good, objs):
            try:
                issues.append(_parse_issue(ref, issue_id, obj))
            except DamagedIssue as e:
                self._report(ref, str(e))
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
        matches = [r[len(ISSUES_PREFIX):] for r in self.repo.refs(f"{ISSUES_PREFIX}{id_or_prefix}*")
                   if contracts.ID_RE.match(r[len(ISSUES_PREFIX):])]
        if not matches:
            raise NoSuchIssue(f"no issue '{id_or_prefix}' in {ISSUES_PREFIX.rstrip('/')} (try: factory-issue list)")
        if len(matches) > 1:
            raise NoSuchIssue(f"'{id_or_prefix}' matches {len(matches)} issues ({', '.join(sorted(matches)[:5])}); "
                              "give more of the id")
        return matches[0]

    def read(self, issue_id: str) -> tuple[dict, str]:
        """(issue, commit) as they stand now."""
        ref = ISSUES_PREFIX + issue_id
        head = self.repo.cat_batch([ref, f"{ref}:{ISSUE_FILE}"])
        if head[0] is None:
            raise NoSuchIssue(f"no issue '{issue_id}' in {ISSUES_PREFIX.rstrip('/')} (try: factory-issue list)")
        if head[0][1] != "commit":
            raise DamagedIssue(damage_message(ref, f"points at a {head[0][1]}, not a commit"))
        return _parse_issue(ref, issue_id, head[1]), head[0][0]

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
        draft) is not filed and its match is returned with filed=False.

        Each new issue takes its fingerprint's ref in the same transaction (where no active
        issue holds it), so two filers of one fingerprint cannot both file under --dedupe:
        the second's transaction fails, it re-reads, and finds the first's issue."""
        regressions: list[tuple[str, str]] = []  # (new issue, old issue), commented on once filed

        def attempt():
            regressions.clear()
            fps = [d["fingerprint"] for d in drafts if d["fingerprint"]]
            holders = self._fingerprint_holders(fps)
            signed = [d["fingerprint"] for d in drafts if dedupe and is_signed(d)]
            sigs = self._fingerprint_holders(signed, SIGNATURES_PREFIX)
            last = self._last_of_signatures(signed, sigs) if signed else {}
            sig_moves: dict[str, tuple[str | int, str | None]] = {}  # fingerprint -> (new, expected old)
            existing, adopted = {}, []
            if dedupe and fps:
                for fp, h in holders.items():
                    if h.live(fp):
                        existing[fp] = h.issue
                if any(fp not in existing for fp in fps):
                    # The second net: an active issue whose fingerprint has no ref (filed
                    # before fingerprint refs existed, or whose ref went missing) is still
                    # found in the listing, and takes its ref now.
                    for i in self.all():
                        fp = _active_fingerprint(i)
                        if fp in fps and fp not in existing:
                            existing[fp] = i
                            adopted.append((i["id"], None, fp, self.tips[i["id"]]))
            results, commits, new_issues = [], [], []
            for d in drafts:
                d = hidden.flag_draft(d, contracts.MAX_LABELS)  # text a person cannot see gets a label they can
                fp = d["fingerprint"]
                if dedupe and fp and fp in existing:
                    results.append((existing[fp], False))
                    continue
                old = last.get(fp) if dedupe and is_signed(d) else None
                if old is not None and not verified_closed(old):
                    results.append((old, False))  # done but not verified fixed, failed, closed: still its issue
                    existing[fp] = old
                    continue
                if old is not None:
                    d = regression_draft(d, old)
                ev = make_event("filed", actor, issue=new_id(), fields=d)
                issue = apply_event(None, ev)
                commits.append(NewCommit({ISSUE_FILE: _issue_blob(issue)}, _message(ev)))
                new_issues.append(issue)
                results.append((issue, True))
                if old is not None:
                    regressions.append((issue["id"], old["id"]))
                if dedupe and fp:
                    existing[fp] = issue
                if dedupe and is_signed(d):
                    h = sigs.get(fp)
                    sig_moves[fp] = (len(commits) - 1, h.oid if h else None)
            oids = self.repo.write_commits(commits)
            # A signature held by no ref (found in the listing) takes its ref now.
            for fp, issue in last.items():
                if fp not in sig_moves and fp not in sigs and issue["id"] in self.tips:
                    sig_moves[fp] = (self.tips[issue["id"]], None)
            sig_updates = [(fingerprint_ref(fp, SIGNATURES_PREFIX), oids[new] if isinstance(new, int) else new, old)
                           for fp, (new, old) in sig_moves.items()]
            moves = _fingerprint_moves(adopted + [(i["id"], None, _active_fingerprint(i), oid)
                                                  for i, oid in zip(new_issues, oids)], holders)
            self.repo.update_refs([(ISSUES_PREFIX + i["id"], oid, None) for i, oid in zip(new_issues, oids)]
                                  + moves + sig_updates)
            return results
        results = retry_cas(attempt)
        for new, old in regressions:
            try:
                self.comment(old, f"came back after it was verified fixed: filed again as {new} (regression)", actor)
            except IssueError as e:
                self.warn(f"regression {new} filed, but issue {old} could not be told: {e}")
        return results

    def _last_of_signatures(self, fingerprints: list[str], sigs: dict) -> dict[str, dict]:
        """The last issue of each signature: the one its ref names or, where no ref names
        one (filed before signature refs existed), the newest issue with that fingerprint."""
        last = {fp: h.issue for fp, h in sigs.items() if h.issue is not None and h.issue.get("fingerprint") == fp}
        missing = set(fingerprints) - set(last)
        if missing:
            for i in self.all():  # oldest first: the newest wins
                if i.get("fingerprint") in missing and SIGNED_SOURCE_RE.match(i["source"]):
                    last[i["fingerprint"]] = i
        return last

    def _fingerprint_holders(self, fingerprints, prefix: str = FINGERPRINTS_PREFIX) -> dict[str, "_Holder"]:
        """Who holds each fingerprint's ref (under `prefix`) now: two git processes however
        many there are, none when there are none."""
        fps = list(dict.fromkeys(f for f in fingerprints if f))
        if not fps:
            return {}
        refs = [fingerprint_ref(f, prefix) for f in fps]
        got = self.repo.cat_batch([spec for r in refs for spec in (r, f"{r}:{ISSUE_FILE}")])
        found = {}
        for n, fp in enumerate(fps):
            head, blob = got[2 * n], got[2 * n + 1]
            if head is None:
                continue
            owner = None
            if blob is not None and blob[1] == "blob":
                try:
                    owner = json.loads(blob[2]).get("id")
                except (ValueError, RecursionError, AttributeError):
                    owner = None
            found[fp] = (head[0], owner if isinstance(owner, str) and contracts.ID_RE.match(owner) else None)
        owners = sorted({o for _, o in found.values() if o})
        current = {}
        for owner, obj in zip(owners, self.repo.cat_batch([f"{ISSUES_PREFIX}{o}:{ISSUE_FILE}" for o in owners])):
            try:
                current[owner] = _parse_issue(ISSUES_PREFIX + owner, owner, obj)
            except DamagedIssue:
                pass  # a holder that cannot be read holds nothing
        return {fp: _Holder(oid, owner, current.get(owner)) for fp, (oid, owner) in found.items()}

    # -- changing ------------------------------------------------------------------

    def change(self, id_or_prefix: str, events_for, also=None) -> dict:
        """Apply the events `events_for(issue, last_event_time)` returns, as one compare-and-swap
        per event batch, retried on conflict. events_for may raise to refuse the change.
        `also(issue)` may name more ref updates [(ref, new, expected old)] that must move in
        the same transaction, all or none (a run's branch moves only with its issue)."""
        issue_id = self.resolve(id_or_prefix)

        def attempt():
            issue, head = self.read(issue_id)
            before = _active_fingerprint(issue)
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
            after = _active_fingerprint(issue)
            if before != after:  # it left (or entered) the active states, or its fingerprint changed
                extra = extra + _fingerprint_moves([(issue_id, before, after, oids[-1])],
                                                   self._fingerprint_holders([before, after]))
            self.repo.update_refs([(ISSUES_PREFIX + issue_id, oids[-1], head)] + extra)
            return issue
        return retry_cas(attempt)

    def claim(self, id_or_prefix: str, actor: str, lease: dict | None = None) -> dict:
        """Claim an open issue under a new token and `lease` (see leases.py)."""
        def events(issue, last):
            if issue["state"] != "open":
                by = f" by {issue['claimed_by']}" if issue.get("claimed_by") else ""
                raise NotClaimable(f"issue '{issue['id']}' is {issue['state']}{by}; only open issues can be claimed")
            # The token names this claim: whatever runs under it may land its work once
            # (the landing's compare-and-swap spends it), however many times it is started.
            ev = make_event("claim", actor, after=last, token=os.urandom(8).hex())
            if lease:
                ev["lease"] = lease
            return [ev]
        return self.change(id_or_prefix, events)

    def take_over(self, issue_id: str, token: str | None, lease: dict, actor: str) -> dict:
        """Hold a claim handed over by its claimer (`next --claim | factory-spawn`): the
        lease names the new holder. NotClaimable when the claim is no longer that token's."""
        def events(issue, last):
            if issue["state"] != "claimed" or (token and issue.get("claim_token") != token):
                raise NotClaimable(f"issue '{issue['id']}' was claimed again since it was handed over "
                                   f"(now {issue['state']}, by {issue.get('claimed_by')})")
            return [make_event("set", actor, after=last, fields={"lease": lease})]
        return self.change(issue_id, events)

    def requeue_dead_claims(self, actor: str, issues: list[dict] | None = None) -> list[str]:
        """Put back every claimed issue whose lease is certainly dead (leases.dead): open
        again, not counted as an attempt, once (a compare-and-swap on the claim's token)."""
        from . import leases
        requeued = []
        for issue in issues if issues is not None else self.all():
            why = leases.dead(issue)
            if not why:
                continue
            token = issue.get("claim_token")
            ours = []

            def events(cur, last, why=why, token=token, ours=ours):
                ours.clear()
                if cur["state"] != "claimed" or cur.get("claim_token") != token:
                    return []  # someone else settled or re-queued it first
                ours.append(True)
                ev = make_event("set", actor, after=last, fields={"state": "open", "claimed_by": None})
                return [ev, make_event("comment", actor, after=ev["at"],
                                       text=f"re-queued: {why} (not counted as an attempt)")]
            try:
                self.change(issue["id"], events)
            except IssueError:
                continue
            if ours:
                requeued.append(issue["id"])
        return requeued

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
        most urgent first, oldest first among equals. A lesson's issue (source
        postmortem:...) is never work for an agent: it carries its own branch, for the gate."""
        now = now or now_iso()
        state = {i["id"]: i["state"] for i in issues}
        out = [i for i in issues
               if i["state"] == "open" and not str(i.get("source", "")).startswith("postmortem:")
               and (not i.get("not_before") or i["not_before"] <= now)
               and all(state.get(d) in contracts.FINISHED_STATES for d in i.get("depends_on", []))]
        out.sort(key=lambda i: (i["priority"], i["created"], i["id"]))
        return out

    # -- merging clones ------------------------------------------------------------

    def pull(self, remote: str, *, trusted: bool = False, peer: str | None = None,
             actor: str | None = None) -> "PullResult":
        """Fetch another clone's issues (a remote name, path or URL) and merge them into ours.

        What arrives is checked whole (peerdata) before any ref of ours moves; a bad
        history is skipped and reported, and every good issue moves in one transaction,
        so a pull is all or nothing for the good issues and an interrupted one moves
        nothing. From an untrusted remote (the default) an issue whose new events change
        trust or source is refused, and a new issue is taken in only together with our
        own event marking it untrusted and from `peer:NAME`."""
        check_remote(remote)
        peer = peer or peer_name(remote)
        actor = actor or default_actor()
        result = PullResult()
        # Their refs are only read, and their objects fetched under no ref at all: nothing
        # of theirs is named here until it has been checked.
        theirs: dict[str, str] = {}
        for ref, oid in sorted(self.repo.remote_refs(remote, ISSUES_PREFIX).items()):
            issue_id = ref[len(ISSUES_PREFIX):]
            if contracts.ID_RE.match(issue_id):
                theirs[issue_id] = oid
            else:
                result.rejected.append((ref, "is not named by an issue id (12 hex digits)"))
        mine = self.repo.refs(ISSUES_PREFIX)
        same = {i for i, oid in theirs.items() if mine.get(ISSUES_PREFIX + i) == oid}
        if same:  # the very commit we hold: nothing to fetch or check
            have = {i["id"]: i for i in self.all()}
            result.merged += [(have[i], "up-to-date") for i in sorted(same) if i in have]
            theirs = {i: oid for i, oid in theirs.items() if i not in same}
        self.repo.fetch_objects(remote, sorted(set(theirs.values())))
        checked = peerdata.read_histories(self.repo, theirs)
        for issue_id, h in sorted(checked.items()):
            if isinstance(h, peerdata.Rejected):
                result.rejected.append((ISSUES_PREFIX + issue_id, str(h)))
        good = {i: h for i, h in checked.items() if isinstance(h, peerdata.History)}
        merged, refused = retry_cas(lambda: self._adopt(good, trusted, peer, actor))
        result.merged += merged
        result.rejected += refused
        return result

    def _adopt(self, theirs: dict, trusted: bool, peer: str, actor: str):
        """Move every good issue's ref in one transaction: ([(issue, how)], [(ref, why refused)]).
        Run again from the start when the transaction loses to a local writer."""
        refused: list[tuple[str, str]] = []
        ours_tips = {ref[len(ISSUES_PREFIX):]: oid for ref, oid in self.repo.refs(ISSUES_PREFIX).items()}
        differ = {i: ours_tips[i] for i, h in theirs.items() if i in ours_tips and ours_tips[i] != h.tip}
        ours = peerdata.read_histories(self.repo, differ)
        plans, commits, done = [], [], []

        def refuse(issue_id, why):
            refused.append((ISSUES_PREFIX + issue_id, why))

        for issue_id, h in sorted(theirs.items()):
            ref, mine = ISSUES_PREFIX + issue_id, ours_tips.get(issue_id)
            if mine == h.tip:  # someone else brought it meanwhile
                done.append((h.issue, "up-to-date"))
                continue
            o = ours.get(issue_id)
            if isinstance(o, peerdata.Rejected):
                refuse(issue_id, f"our own history of it is damaged ({o}); repair or remove {ref} first")
                continue
            if o is not None and o.filed["id"] != h.filed["id"]:
                refuse(issue_id, "it is another issue than ours under the same id (its filed event differs)")
                continue
            if not trusted:
                novel = [e for e in h.events.values() if o is None or e["id"] not in o.events]
                grabs = [(e["id"], sorted(set(e["fields"]) & set(peerdata.TRUST_FIELDS)))
                         for e in novel if e["type"] == "set"]
                grabs = [(eid, fields) for eid, fields in grabs if fields]
                if grabs:
                    refuse(issue_id, f"event {grabs[0][0]} changes {' and '.join(grabs[0][1])}, which only "
                                     "this repository's own people may do (from a clone of your own people: "
                                     "pull --trusted)")
                    continue
            if o is not None and h.tip in o.commits:
                done.append((o.issue, "up-to-date"))
                continue
            if o is None:
                issue, how, tip = h.issue, "new", h.tip
            elif mine in h.commits:
                issue, how, tip = h.issue, "fast-forward", h.tip
            else:
                issue, how = fold(list({**o.events, **h.events}.values())), "merged"
                problem = contracts.check_stored_issue(issue, issue_id)
                if problem:  # each side alone was fine; together they are not (say, too many labels)
                    refuse(issue_id, f"merged with ours it would not be a valid issue: {problem}")
                    continue
                commits.append(NewCommit({ISSUE_FILE: _issue_blob(issue)}, f"merge {issue_id}\n",
                                         parents=[mine, h.tip]))
                tip = len(commits) - 1
            # Text from an untrusted remote is untrusted text: a new issue, or one of ours it
            # changed, is marked so by an event of ours on top of what it sent.
            mark = {}
            if not trusted and (o is None or issue["trust"] == "trusted"):
                mark["trust"] = "untrusted"
            if not trusted and o is None and not issue["source"].startswith("peer:"):
                mark["source"] = f"peer:{peer}"
            if mark:
                ev = make_event("set", actor, after=issue["updated"], issue=issue_id, fields=mark)
                issue = apply_event(issue, ev)
                commits.append(NewCommit({ISSUE_FILE: _issue_blob(issue)}, _message(ev), parents=[tip]))
                tip = len(commits) - 1
            plans.append((ref, tip, mine, issue, how))
        oids = self.repo.write_commits(commits)
        updates = [(ref, oids[new] if isinstance(new, int) else new, old) for ref, new, old, _, _ in plans]
        # Fingerprints move with the issues: one that arrives active takes its ref where it
        # is free, one that a pull ends gives its ref back.
        before = {i: _active_fingerprint(o.issue) for i, o in ours.items() if isinstance(o, peerdata.History)}
        changes = [(issue["id"], before.get(issue["id"]), _active_fingerprint(issue), new)
                   for (_, new, _), (_, _, _, issue, _) in zip(updates, plans)]
        changes = [c for c in changes if c[1] != c[2]]
        if changes:
            holders = self._fingerprint_holders([f for c in changes for f in c[1:3]])
            updates += _fingerprint_moves(changes, holders)
        if updates:
            self.repo.update_refs(updates)
        return done + [(issue, how) for _, _, _, issue, how in plans], refused


class _Holder:
    """A fingerprint ref as it stands: its value, the issue it names, that issue now."""

    def __init__(self, oid: str, owner: str | None, issue: dict | None):
        self.oid, self.owner, self.issue = oid, owner, issue

    def live(self, fingerprint: str) -> bool:
        """Whether it still stands for an active issue with this fingerprint (else it is
        stale: left by a change this store did not make, and free to take)."""
        return self.issue is not None and _active_fingerprint(self.issue) == fingerprint


def _fingerprint_moves(changes, holders: dict) -> list[tuple[str, str, str | None]]:
    """The fingerprint ref updates for [(issue id, fingerprint held before, fingerprint
    held after, the issue's new commit)], given the holders as read: give back a ref the
    issue held, take one that is free, stale, or given back in this same transaction
    (one pull may close one issue and bring another with its fingerprint). Each expects
    the value read, so a concurrent change makes the whole transaction fail and retry."""
    moves: dict[str, tuple[str, str | None]] = {}  # fingerprint -> (new, expected old)
    for issue_id, before, after, _ in changes:
        h = holders.get(before) if before and before != after else None
        if h is not None and h.owner == issue_id:
            moves[before] = (ZERO, h.oid)
    for issue_id, before, after, commit in changes:
        if not after or after == before:
            continue
        h = holders.get(after)
        if after in moves:
            if moves[after][0] == ZERO:  # given back just now: taken over instead
                moves[after] = (commit, moves[after][1])
        elif h is None:
            moves[after] = (commit, None)
        elif h.owner != issue_id and not h.live(after):
            moves[after] = (commit, h.oid)
    return [(fingerprint_ref(fp), new, old) for fp, (new, old) in moves.items()]


class PullResult:
    def __init__(self):
        self.merged: list[tuple[dict, str]] = []     # (issue, new|up-to-date|fast-forward|merged)
        self.rejected: list[tuple[str, str]] = []    # (their ref, why it was skipped)


def peer_name(remote: str) -> str:
    """A name for `peer:NAME` from a remote's name, path or URL: its last part."""
    last = re.sub(r"\.git$", "", remote.rstrip("/")).replace(":", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", last).strip("._-")[:64]
    return name or "unknown"


__all__ = ["IssueStore", "IssueError", "NoSuchIssue", "NotClaimable", "DamagedIssue", "ContractError",
           "RefConflict", "PullResult"]
