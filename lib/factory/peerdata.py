"""Checking issue histories that came from another clone, before any of our refs moves.

A clone we pull from may be anyone's, so what it sends is data to check, never state to
adopt. An issue's history is accepted only when every commit in it is one the store
could have written itself:

- the ref is named by an issue id, and points at a commit;
- every commit carries one well-formed event of a type `issues.apply_event` knows, with
  the limits `contracts` puts on what people file (sizes, labels, ids), for this issue;
  a commit without an event is a merge (two parents or more);
- the history has one root, which carries the one `filed` event;
- event times never go backwards along parent links (git-bug's rule: a history that
  breaks the order is refused, not repaired), and none lies more than
  MAX_CLOCK_SKEW_SECONDS in our future;
- at most MAX_ISSUE_COMMITS commits, each at most MAX_COMMIT_BYTES, together at most
  MAX_HISTORY_BYTES (sizes are asked before anything is read);
- the tip's issue.json is exactly the fold of the events (compared by object id, so
  a huge issue.json is never read).

Reading is batched: one rev-list, two cat-file --batch-check and one cat-file --batch per
READ_BATCH_BYTES for however many issues, as the rest of the store does.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from . import contracts
from .contracts import ContractError
from .gitstore import Repo

MAX_CLOCK_SKEW_SECONDS = 300     # how far in our future a peer's clock may run
MAX_ISSUE_COMMITS = 10_000       # events and merges in one issue's history
# The largest event: a body of MAX_BODY_BYTES, JSON-escaped (up to 6 bytes a byte), plus
# the commit's headers and the rest of the event.
MAX_COMMIT_BYTES = contracts.MAX_BODY_BYTES * 6 + 64 * 1024
MAX_HISTORY_BYTES = 16 << 20     # all commits of one issue: what one issue may cost to check
READ_BATCH_BYTES = 64 << 20      # commits read into memory at once during a pull

EVENT_ID_RE = re.compile(r"^[0-9a-f]{16}$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
EVENT_KEYS = ("v", "id", "at", "actor", "type", "issue")
# The keys each event type carries besides EVENT_KEYS (what issues.apply_event reads).
TYPE_KEYS = {"filed": ("fields",), "set": ("fields",), "labels": ("add", "remove"),
             "comment": ("text",), "claim": ("token", "lease"), "runs": ("add",)}
# apply_event reads these with .get (a claim written before claims had tokens has none)
OPTIONAL_KEYS = {"labels": ("add", "remove"), "claim": ("token", "lease")}
# A `set` may change what `update` may, and `source` (written by this store when it
# marks an issue that came from a peer).
# `verdict` (the gate's) and `approved` (a person's) are set by this store's own tools only.
SET_FIELDS = contracts.PATCH_FIELDS + ("source", "lease", "verdict", "approved")
TRUST_FIELDS = ("trust", "source", "verdict", "approved")


class Rejected(Exception):
    """A fetched history that is not one the store could have written; says why."""


@dataclass
class History:
    """One issue's history as read from git: every commit's parents and event."""
    issue_id: str
    tip: str
    commits: dict[str, list[str]] = field(default_factory=dict)   # commit -> parents
    events: dict[str, dict] = field(default_factory=dict)         # event id -> event
    filed: dict | None = None
    issue: dict | None = None                                     # the fold of the events


# -- one event -------------------------------------------------------------------------

def _same(name: str, value, normalised) -> None:
    if value != normalised:
        raise ContractError(name, f"{contracts.quote(value)} is not in the form the store writes")


def check_event(ev, issue_id: str) -> dict:
    """The event, if it is one the store could have written for this issue; else ContractError."""
    if not isinstance(ev, dict):
        raise ContractError("event", "must be a JSON object")
    t = ev.get("type")
    if not isinstance(t, str) or t not in TYPE_KEYS:
        raise ContractError("type", f"{contracts.quote(t)} is not an event type ({', '.join(TYPE_KEYS)})")
    extra = set(ev) - set(EVENT_KEYS) - set(TYPE_KEYS[t])
    missing = (set(EVENT_KEYS) | set(TYPE_KEYS[t]) - set(OPTIONAL_KEYS.get(t, ()))) - set(ev)
    if extra or missing:
        raise ContractError("event", f"{t} event has unknown keys {contracts.quote(sorted(extra))} "
                                     f"or lacks {sorted(missing)}")
    if ev["v"] != 1 or isinstance(ev["v"], bool):
        raise ContractError("v", f"{contracts.quote(ev['v'])} is not event version 1")
    if not isinstance(ev["id"], str) or not EVENT_ID_RE.match(ev["id"]):
        raise ContractError("id", "must be 16 hex digits")
    if ev["issue"] != issue_id:
        raise ContractError("issue", f"{contracts.quote(ev['issue'])} is not this ref's issue {issue_id}")
    if not isinstance(ev["at"], str) or not TIME_RE.match(ev["at"]):
        raise ContractError("at", f"{contracts.quote(ev['at'])} is not a time such as 2026-01-31T12:00:00.000000Z")
    try:
        datetime.strptime(ev["at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise ContractError("at", f"{ev['at']!r} is not a time")
    contracts._text("actor", ev["actor"], max_chars=128, single_line=True, empty_ok=False)
    if t == "filed":
        f = ev["fields"]
        if not isinstance(f, dict) or set(f) != set(contracts.DRAFT_FIELDS):
            raise ContractError("fields", f"a filed event names exactly {', '.join(contracts.DRAFT_FIELDS)}")
        _same("fields", f, contracts.validate_draft(f))
    elif t == "set":
        f = ev["fields"]
        if not isinstance(f, dict) or not f:
            raise ContractError("fields", "must be a non-empty object")
        for k, v in f.items():
            if k not in SET_FIELDS:
                raise ContractError(contracts.quote(k), f"cannot be set (settable: {', '.join(SET_FIELDS)})")
            _same(k, v, contracts._field(k, v))
    elif t == "claim":
        if "token" in ev and (not isinstance(ev["token"], str) or not EVENT_ID_RE.match(ev["token"])):
            raise ContractError("token", "must be 16 hex digits")
        if "lease" in ev:
            _same("lease", ev["lease"], contracts._lease(ev["lease"]))
    elif t == "labels":
        for k in ("add", "remove"):
            if k in ev:
                _same(k, ev[k], contracts._labels(k, ev[k]))
    elif t == "comment":
        contracts.validate_comment(ev["text"])
    elif t == "runs":
        contracts._run_ids("add", ev["add"])
    return ev


def _event_in(message: str) -> dict | None:
    """The event a commit message carries (after its summary line), or None for a merge."""
    _, _, body = message.partition("\n\n")
    body = body.strip()
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested a million deep
        raise ContractError("event", "the commit message's event is not JSON")


def _parse_commit(raw: bytes) -> tuple[str | None, list[str], str]:
    """(tree, parents, message) of a raw commit object."""
    head, _, msg = raw.partition(b"\n\n")
    tree, parents = None, []
    for line in head.split(b"\n"):
        if line.startswith(b"tree "):
            tree = line[5:].decode()
        elif line.startswith(b"parent "):
            parents.append(line[7:].decode())
    return tree, parents, msg.decode("utf-8")


def blob_id(data: bytes, like: str) -> str:
    """The object id git gives `data` as a blob, in the hash of an id like `like`."""
    algo = hashlib.sha256 if len(like) == 64 else hashlib.sha1
    return algo(b"blob %d\0" % len(data) + data).hexdigest()


# -- whole histories -------------------------------------------------------------------

def read_histories(repo: Repo, tips: dict[str, str], *, now: datetime | None = None) -> dict[str, History | Rejected]:
    """Check the histories ending at `tips` (issue id -> commit): a History per issue id,
    or Rejected saying why."""
    now = now or datetime.now(timezone.utc)
    latest = (now + timedelta(seconds=MAX_CLOCK_SKEW_SECONDS)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out: dict[str, History | Rejected] = {}
    if not tips:
        return out
    # Types first: rev-list stops at the first tip that is not a commit.
    kinds = repo.cat_batch_check(list(tips.values()))
    walk = {}
    for (issue_id, tip), info in zip(tips.items(), kinds):
        if info is None or info[1] != "commit":
            out[issue_id] = Rejected(f"points at a {info[1] if info else 'missing object'}, not a commit")
        else:
            walk[issue_id] = tip
    graph = repo.rev_list(sorted(set(walk.values())), max_count=len(walk) * (MAX_ISSUE_COMMITS + 1))
    listed = list(graph)
    sizes = dict(zip(listed, repo.cat_batch_check(listed)))
    blobs = dict(zip(walk, repo.cat_batch_check([f"{tip}:issue.json" for tip in walk.values()])))
    # Sizes are known before anything is read: an issue too big to check is refused
    # unread, and the rest are read a bounded number of bytes at a time.
    batches: list[list[tuple[str, list[str]]]] = [[]]
    batch_bytes = 0
    for issue_id, tip in walk.items():
        try:
            closure = _closure(tip, graph, sizes)
        except Rejected as e:
            out[issue_id] = e
            continue
        if batch_bytes >= READ_BATCH_BYTES:
            batches.append([])
            batch_bytes = 0
        batches[-1].append((issue_id, closure))
        batch_bytes += sum(sizes[c][2] for c in closure)
    for batch in batches:
        commits = sorted({c for _, closure in batch for c in closure})
        raw = dict(zip(commits, repo.cat_batch(commits)))
        for issue_id, _ in batch:
            out[issue_id] = _checked(issue_id, walk[issue_id], raw, blobs[issue_id], latest)
    return out


def _closure(tip: str, graph: dict, sizes: dict) -> list[str]:
    """The commits of one issue's history, refused when too many or too big to read."""
    seen, stack, total = set(), [tip], 0
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        if len(seen) >= MAX_ISSUE_COMMITS or c not in graph:
            raise Rejected(f"its history has more than {MAX_ISSUE_COMMITS} commits")
        info = sizes.get(c)
        if info is None or info[1] != "commit":
            raise Rejected(f"{c[:12]} in its history is not a commit")
        if info[2] > MAX_COMMIT_BYTES:
            raise Rejected(f"commit {c[:12]} is {info[2]} bytes; at most {MAX_COMMIT_BYTES} are allowed")
        total += info[2]
        if total > MAX_HISTORY_BYTES:
            raise Rejected(f"its history is more than {MAX_HISTORY_BYTES} bytes")
        seen.add(c)
        stack.extend(graph[c])
    return list(seen)


def _checked(issue_id, tip, raw, blob, latest) -> History | Rejected:
    # The store's own fold and serialisation: what is accepted is what it would have written.
    from .issues import _issue_blob as issue_blob, fold
    try:
        h = _history(issue_id, tip, raw, latest)
        h.issue = fold(list(h.events.values()))
        problem = contracts.check_stored_issue(h.issue, issue_id)
        if problem:
            raise Rejected(f"the fold of its events is not a valid issue: {problem}")
        if blob is None or blob[1] != "blob" or blob[0] != blob_id(issue_blob(h.issue), blob[0]):
            raise Rejected("its issue.json is not the fold of its events")
        return h
    except Rejected as e:
        return e


def _history(issue_id: str, tip: str, raw: dict, latest: str) -> History:
    h = History(issue_id, tip)
    event_of: dict[str, dict | None] = {}
    roots = []
    stack = [tip]
    while stack:  # every commit reachable from the tip, each read once
        c = stack.pop()
        if c in h.commits:
            continue
        if raw.get(c) is None:  # _closure read every commit of the history
            raise Rejected(f"commit {c[:12]} of its history could not be read")
        _, kind, data = raw[c]
        if kind != "commit":
            raise Rejected(f"{c[:12]} is a {kind}, not a commit")
        try:
            _, parents, message = _parse_commit(data)
            ev = _event_in(message)
            if ev is not None:
                check_event(ev, issue_id)
        except (ContractError, UnicodeDecodeError) as e:
            raise Rejected(f"commit {c[:12]}: {str(e)[:300]}")  # the peer chose what it quotes
        h.commits[c], event_of[c] = parents, ev
        if not parents:
            roots.append(c)
        if ev is None:
            if len(parents) < 2:
                raise Rejected(f"commit {c[:12]} carries no event and is not a merge")
        else:
            if ev["id"] in h.events and h.events[ev["id"]] != ev:
                raise Rejected(f"event {ev['id']} appears twice with different contents")
            h.events[ev["id"]] = ev
            if ev["at"] > latest:
                raise Rejected(f"event {ev['id']} is dated {ev['at']}, more than "
                               f"{MAX_CLOCK_SKEW_SECONDS} s in the future")
        stack.extend(parents)
    filed = [ev for ev in h.events.values() if ev["type"] == "filed"]
    if len(roots) != 1 or event_of[roots[0]] is None or event_of[roots[0]]["type"] != "filed" or len(filed) != 1:
        raise Rejected("its history does not start with exactly one filed event")
    h.filed = filed[0]
    _check_order(h, event_of)
    return h


def _check_order(h: History, event_of: dict) -> None:
    """Each event is later than every event before it along parent links; a merge is as
    late as its latest parent. Parents are visited before children (post-order)."""
    time_of: dict[str, str] = {}
    stack = [(h.tip, False)]
    while stack:
        c, parents_done = stack.pop()
        if c in time_of:
            continue
        if not parents_done:
            stack.append((c, True))
            stack.extend((p, False) for p in h.commits[c] if p not in time_of)
            continue
        before = max((time_of[p] for p in h.commits[c]), default="")
        ev = event_of[c]
        if ev is not None and ev["at"] <= before:
            raise Rejected(f"event {ev['id']} ({ev['at']}) is not later than the events before it "
                           f"({before}): its history goes back in time")
        time_of[c] = ev["at"] if ev is not None else before
