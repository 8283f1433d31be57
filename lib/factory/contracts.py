"""The JSON shapes the tools exchange, their versions and their validation.

A shape only grows: a new field or a new version, never a new meaning for an old field.
docs/contracts.md describes each shape for people; this module is what is enforced.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

ISSUE_VERSION = 1

STATES = ("open", "claimed", "review", "done", "failed", "closed")
FINISHED_STATES = ("done", "closed")        # a dependency in one of these no longer blocks
ACTIVE_STATES = ("open", "claimed", "review")  # what --dedupe compares a fingerprint against
from .registry import KINDS
TRUST_LEVELS = ("trusted", "untrusted")
PRIORITY_RANGE = (0, 4)                      # 0 is the most urgent, as in P0
DEFAULT_PRIORITY = 2

MAX_LINE_BYTES = 1 << 20
MAX_TITLE_CHARS = 256
MAX_BODY_BYTES = 256 * 1024
MAX_COMMENT_BYTES = 64 * 1024
MAX_LABELS = 32
MAX_FINGERPRINT_CHARS = 256

# Patterns end in \Z, not $: `$` also matches before a trailing newline.
SOURCE_RE = re.compile(r"^(human|(sensor|adversary|peer|postmortem):[A-Za-z0-9][A-Za-z0-9._-]{0,63})\Z")
OID_RE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})\Z")
VERDICTS = ("pass", "refuse")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,63}\Z")
ID_RE = re.compile(r"^[0-9a-f]{12}\Z")
ID_PREFIX_RE = re.compile(r"^[0-9a-f]{1,12}\Z")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
# A model name as the API, Bedrock or Vertex spell them: claude-sonnet-4-5-20250929,
# anthropic.claude-3-5-sonnet-20241022-v2:0, claude-3-5-sonnet-v2@20241022.
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}\Z")
MAX_JSON_DEPTH = 64  # nesting deeper than this is refused on input: no shape needs a tenth of it

# Control characters: none in a one-line field; a body or comment may hold tab, newline and
# carriage return, nothing else (a NUL or an escape sequence is never text a person wrote).
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
BODY_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# Fields an issue carries that only the store sets. `factory-issue show X | factory-issue file`
# copies an issue, so on input they are ignored rather than refused.
STORE_FIELDS = ("v", "id", "state", "created", "updated", "attempts", "runs", "branch",
                "claimed_by", "claim_token", "lease", "comments", "history", "not_before")
# Fields a person or a tool may give when filing.
DRAFT_FIELDS = ("title", "body", "labels", "priority", "fingerprint", "source", "trust", "kind",
                "depends_on")
# Fields `update` may set (labels are replaced; add_labels/remove_labels edit them).
PATCH_FIELDS = ("title", "body", "labels", "priority", "fingerprint", "trust", "kind", "depends_on",
                "state", "branch", "attempts", "not_before", "claimed_by")


class ContractError(ValueError):
    """A value does not fit its shape; `field` names what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def quote(value) -> str:
    """A value quoted in an error message, cut: whoever sent it chose its size."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(field: str, value, *, max_bytes: int | None = None, max_chars: int | None = None,
          single_line: bool = False, empty_ok: bool = True) -> str:
    """A string field. single_line: no control character at all; otherwise tab, newline and
    carriage return are the only ones allowed."""
    if not isinstance(value, str):
        raise ContractError(field, f"must be a string, not {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise ContractError(field, "must not be empty")
    if max_chars is not None and len(value) > max_chars:
        raise ContractError(field, f"is {len(value)} characters; at most {max_chars} are allowed")
    if max_bytes is not None and len(value.encode()) > max_bytes:
        raise ContractError(field, f"is {len(value.encode())} bytes; at most {max_bytes} are allowed")
    if single_line and ("\n" in value or "\r" in value):
        raise ContractError(field, "must be a single line")
    bad = (CONTROL_RE if single_line else BODY_CONTROL_RE).search(value)
    if bad:
        raise ContractError(field, f"holds the control character {bad.group()!r} at character {bad.start() + 1}"
                                   + ("" if single_line else " (only tab, newline and carriage return are allowed)")
                                   + "; remove it")
    return value


def check_branch_name(field: str, value: str) -> str:
    """`value` if git would take it as a branch name (git check-ref-format --branch's
    rules, written out here so that no git process is needed to refuse one)."""
    def bad(why):
        raise ContractError(field, f"{quote(value)} is not a branch name: {why}")
    if value.startswith("-"):
        bad("it may not start with '-'")
    if value == "@" or value == "HEAD":
        bad(f"{value} is not a branch")
    bad_char = re.search(r"[\x00-\x20\x7f~^:?*\[\\]", value)
    if bad_char:
        bad(f"it may not hold {bad_char.group()!r} (nor spaces, control characters, ~ ^ : ? * [ \\)")
    if ".." in value or "@{" in value:
        bad("it may not hold '..' or '@{'")
    if value.startswith("/") or value.endswith("/") or "//" in value or value.endswith("."):
        bad("it may not start or end with '/', hold '//' or end with '.'")
    for part in value.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            bad("no part of it may start with '.' or end with '.lock'")
    return value


def _labels(field: str, value) -> list[str]:
    if not isinstance(value, list):
        raise ContractError(field, f"must be a list of strings, not {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise ContractError(field, f"has {len(value)} labels; at most {MAX_LABELS} are allowed")
    out = []
    for v in value:
        if not isinstance(v, str) or not LABEL_RE.match(v):
            raise ContractError(field, f"label {quote(v)} must match {LABEL_RE.pattern}")
        if v not in out:
            out.append(v)
    return out


def _priority(value) -> int:
    lo, hi = PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError("priority", f"must be an integer from {lo} (most urgent) to {hi}")
    if not lo <= value <= hi:
        raise ContractError("priority", f"is {value}; it must be from {lo} (most urgent) to {hi}")
    return value


def _choice(field: str, value, choices) -> str:
    if value not in choices:
        raise ContractError(field, f"is {quote(value)}; it must be one of: {', '.join(choices)}")
    return value


def _ids(field: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and ID_RE.match(v) for v in value):
        raise ContractError(field, "must be a list of full issue ids (12 hex digits)")
    return list(dict.fromkeys(value))


def _iso_time(field: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContractError(field, "must be an ISO 8601 time such as 2026-01-31T12:00:00Z, or null")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ContractError(field, f"{quote(value)} is not an ISO 8601 time such as 2026-01-31T12:00:00Z")
    if parsed.tzinfo is None:
        raise ContractError(field, f"{quote(value)} needs a time zone, such as a trailing Z")
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_time(field: str, value) -> str | None:
    """An ISO 8601 time with a zone, normalised to UTC with microseconds; ContractError otherwise."""
    return _iso_time(field, value)


def _field(name: str, value):
    """Validate one issue field; return its normalised value."""
    if name == "title":
        return _text(name, value, max_chars=MAX_TITLE_CHARS, single_line=True, empty_ok=False).strip()
    if name == "body":
        return _text(name, value, max_bytes=MAX_BODY_BYTES)
    if name == "labels":
        return _labels(name, value)
    if name == "priority":
        return _priority(value)
    if name == "fingerprint":
        if value is None:
            return None
        return _text(name, value, max_chars=MAX_FINGERPRINT_CHARS, single_line=True, empty_ok=False)
    if name == "source":
        if not isinstance(value, str) or not SOURCE_RE.match(value):
            raise ContractError(name, f"{quote(value)} must be 'human', 'sensor:NAME', 'adversary:NAME', "
                                       "'peer:NAME' or 'postmortem:NAME'")
        return value
    if name == "trust":
        return _choice(name, value, TRUST_LEVELS)
    if name == "kind":
        return _choice(name, value, KINDS)
    if name == "state":
        return _choice(name, value, STATES)
    if name == "depends_on":
        return _ids(name, value)
    if name == "branch":
        if value is None:
            return None
        value = _text(name, value, max_chars=255, single_line=True, empty_ok=False)
        return check_branch_name(name, value)
    if name == "claimed_by":
        if value is None:
            return None
        return _text(name, value, max_chars=128, single_line=True, empty_ok=False)
    if name == "attempts":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ContractError(name, "must be a whole number, 0 or more")
        return value
    if name == "not_before":
        return _iso_time(name, value)
    if name == "lease":
        return _lease(value)
    if name == "verdict":
        return _issue_verdict(value)
    if name == "approved":
        return _approval(value)
    raise ContractError(name, "is not a field of an issue")


def _oid(field: str, value, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not OID_RE.match(value):
        raise ContractError(field, f"{quote(value)} is not a commit id (40 or 64 hex digits)")
    return value


# The gate's last verdict as an issue keeps it (factory-gate sets it): which head was
# judged against which base, and where the whole verdict is recorded.
ISSUE_VERDICT_KEYS = ("verdict", "head", "base", "fingerprint", "record", "at", "summary", "needs_approval")


def _issue_verdict(value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(ISSUE_VERDICT_KEYS):
        raise ContractError("verdict", f"must be null or an object with {', '.join(ISSUE_VERDICT_KEYS)}")
    _choice("verdict.verdict", value["verdict"], VERDICTS)
    _oid("verdict.head", value["head"])
    _oid("verdict.base", value["base"], nullable=True)
    if value["fingerprint"] is not None:
        _text("verdict.fingerprint", value["fingerprint"], max_chars=MAX_FINGERPRINT_CHARS, single_line=True)
    if value["record"] is not None:
        _text("verdict.record", value["record"], max_chars=255, single_line=True)
    _iso_time("verdict.at", value["at"])
    _text("verdict.summary", value["summary"], max_chars=1000)
    if not isinstance(value["needs_approval"], bool):
        raise ContractError("verdict.needs_approval", "must be true or false")
    return dict(value)


def _approval(value) -> dict | None:
    """A person's `factory approve`: who, when, and the branch head approved (null: the
    issue as such, before any work)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"by", "at", "head"}:
        raise ContractError("approved", "must be null or an object with by, at and head")
    _text("approved.by", value["by"], max_chars=128, single_line=True, empty_ok=False)
    _iso_time("approved.at", value["at"])
    _oid("approved.head", value["head"], nullable=True)
    return dict(value)


def _lease(value) -> dict | None:
    """A claim's lease as leases.py writes it: {"owner": {"host", "pid", "since"}, "until"}."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"owner", "until"}:
        raise ContractError("lease", "must be null or an object with owner and until")
    owner = value["owner"]
    if not isinstance(owner, dict) or set(owner) != {"host", "pid", "since"}:
        raise ContractError("lease.owner", "must be an object with host, pid and since")
    _text("lease.owner.host", owner["host"], max_chars=255, single_line=True, empty_ok=False)
    if isinstance(owner["pid"], bool) or not isinstance(owner["pid"], int) or owner["pid"] <= 0:
        raise ContractError("lease.owner.pid", "must be a positive whole number")
    if owner["since"] is not None and (not isinstance(owner["since"], str) or not owner["since"].isdigit()):
        raise ContractError("lease.owner.since", "must be null or a number of clock ticks, as a string")
    return {"owner": dict(owner), "until": _iso_time("lease.until", value["until"])}


def validate_draft(obj) -> dict:
    """A new issue as given to `factory-issue file`, normalised; raises ContractError.
    A finding (it carries a finding-only field, such as severity) is a draft too: see
    draft_from_finding."""
    if not isinstance(obj, dict):
        raise ContractError("issue", f"must be a JSON object, not {type(obj).__name__}")
    if is_finding(obj):
        obj = draft_from_finding(validate_finding(obj))
    unknown = [k for k in obj if k not in DRAFT_FIELDS and k not in STORE_FIELDS]
    if unknown:
        raise ContractError(unknown[0], f"is not a field of an issue (fields: {', '.join(DRAFT_FIELDS)})")
    if "title" not in obj:
        raise ContractError("title", "is missing; every issue needs a title")
    draft = {
        "title": None, "body": "", "labels": [], "priority": DEFAULT_PRIORITY, "fingerprint": None,
        "source": "human", "trust": "trusted", "kind": "worker", "depends_on": [],
    }
    for k in DRAFT_FIELDS:
        if k in obj:
            draft[k] = _field(k, obj[k])
    if "trust" not in obj and draft["source"].startswith("peer:"):
        draft["trust"] = "untrusted"  # a peer's issue is trusted only where someone says so
    return draft


def validate_patch(obj) -> dict:
    """A change to an issue (`factory-issue update`), normalised; raises ContractError.

    Keys are issue fields to set, plus add_labels / remove_labels to edit labels and
    add_runs to record run ids.
    """
    if not isinstance(obj, dict):
        raise ContractError("patch", f"must be a JSON object, not {type(obj).__name__}")
    patch = {}
    for k, v in obj.items():
        if k == "id":
            continue
        if k in ("add_labels", "remove_labels"):
            patch[k] = _labels(k, v)
        elif k == "add_runs":
            patch[k] = _run_ids(k, v)
        elif k in PATCH_FIELDS:
            patch[k] = _field(k, v)
        else:
            raise ContractError(k, f"cannot be changed (changeable: {', '.join(PATCH_FIELDS)}, "
                                   "add_labels, remove_labels, add_runs)")
    return patch


def _run_ids(field: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) and RUN_ID_RE.match(r) for r in value):
        raise ContractError(field, "must be a list of run ids (letters, digits, . _ : -; at most 128)")
    return value


def check_model_name(field: str, value) -> str:
    """A model name (MODEL_RE): it goes into every request and every record."""
    if not isinstance(value, str) or not MODEL_RE.match(value):
        raise ContractError(field, f"{quote(value)} is not a model name such as claude-sonnet-4-5 (letters, "
                                   "digits and . _ : @ / -, at most 128, no spaces or control characters)")
    return value


def validate_comment(text) -> str:
    return _text("comment", text, max_bytes=MAX_COMMENT_BYTES, empty_ok=False)


# -- an issue as stored -------------------------------------------------------------------

# What every reader (list, next, show, factory status, the supervisor) relies on, by type.
_STORED_TYPES = {
    "title": str, "body": str, "state": str, "kind": str, "labels": list, "priority": int,
    "source": str, "trust": str, "depends_on": list, "attempts": int, "runs": list,
    "comments": list, "created": str, "updated": str,
    "fingerprint": (str, type(None)), "branch": (str, type(None)), "claimed_by": (str, type(None)),
    "not_before": (str, type(None)),
}


def check_stored_issue(obj, issue_id: str) -> str | None:
    """Why a stored issue cannot be used as one, or None. Cheap enough to run on every
    issue `list` reads: it checks types and choices, not sizes."""
    if not isinstance(obj, dict):
        return f"issue.json holds a {type(obj).__name__}, not an object"
    if obj.get("id") != issue_id:
        return f"issue.json's id {quote(obj.get('id'))} is not the ref's {issue_id}"
    for k, t in _STORED_TYPES.items():
        if k not in obj:
            return f"issue.json lacks {k}"
        if not isinstance(obj[k], t) or (t is int and isinstance(obj[k], bool)):
            return f"issue.json's {k} is {quote(obj[k])}"
    for k, choices in (("state", STATES), ("kind", KINDS), ("trust", TRUST_LEVELS)):
        if obj[k] not in choices:
            return f"issue.json's {k} {quote(obj[k])} is not one of {', '.join(choices)}"
    if not all(isinstance(x, str) for x in obj["labels"] + obj["depends_on"]):
        return "issue.json's labels and depends_on must hold strings"
    if len(obj["labels"]) > MAX_LABELS:
        return f"issue.json has {len(obj['labels'])} labels; at most {MAX_LABELS} are allowed"
    return None


# -- task (input to factory-spawn) -------------------------------------------------------

TASK_FIELDS = ("v", "kind", "issue", "ref", "target", "budgets", "model", "sensor", "adversary")
BUDGET_KEYS = {"turns": int, "tokens": int, "cost_usd": (int, float), "wall_seconds": (int, float)}


def validate_task(obj) -> dict:
    """A task for factory-spawn. An issue as factory-issue prints it is a task of the
    issue's kind; raises ContractError."""
    if not isinstance(obj, dict):
        raise ContractError("task", f"must be a JSON object, not {type(obj).__name__}")
    if "title" in obj and "id" in obj and "issue" not in obj:
        obj = {"kind": obj.get("kind", "worker"), "issue": obj}
    unknown = [k for k in obj if k not in TASK_FIELDS]
    if unknown:
        raise ContractError(unknown[0], f"is not a field of a task (fields: {', '.join(TASK_FIELDS)})")
    task = {"kind": _choice("kind", obj.get("kind", "worker"), KINDS)}
    issue = obj.get("issue")
    if task["kind"] == "worker" or issue is not None:
        # The id names the workspace, the container's labels and the run record: a full
        # id or nothing (a sensor may run without an issue).
        if not isinstance(issue, dict) or not isinstance(issue.get("id"), str) or not ID_RE.match(issue["id"]):
            raise ContractError("issue", ("a worker's task needs an issue" if task["kind"] == "worker" else
                                          f"a {task['kind']}'s issue, when given, needs to be an object")
                                + " with a full id (12 hex digits; pipe in: factory-issue next)")
        task["issue"] = issue
    for key in ("ref", "target"):
        if key in obj:
            task[key] = _text(key, obj[key], max_chars=255, single_line=True, empty_ok=False)
            if task[key].startswith("-"):
                # a rev reaches git: one that starts with '-' would be read as an option
                raise ContractError(key, f"{quote(task[key])} is not a rev (a branch, tag or commit; "
                                         "it may not start with '-' or hold control characters)")
    if "model" in obj:
        task["model"] = check_model_name("model", obj["model"])
    budgets = obj.get("budgets", {})
    if not isinstance(budgets, dict):
        raise ContractError("budgets", "must be an object such as {\"turns\": 20}")
    for k, v in budgets.items():
        if k not in BUDGET_KEYS:
            raise ContractError(f"budgets.{k}", f"is not a budget ({', '.join(BUDGET_KEYS)})")
        if isinstance(v, bool) or not isinstance(v, BUDGET_KEYS[k]) or v <= 0:
            raise ContractError(f"budgets.{k}", f"must be a positive number, not {quote(v)}")
    task["budgets"] = dict(budgets)
    for key in ("sensor", "adversary"):
        if key in obj:
            if not isinstance(obj[key], dict):
                raise ContractError(key, "must be an object such as {\"name\": ..., \"prompt\": ...}")
            for k in ("name", "prompt"):
                if obj[key].get(k) is not None:
                    _text(f"{key}.{k}", obj[key][k], max_bytes=MAX_BODY_BYTES, single_line=k == "name")
            task[key] = obj[key]
    return task


# -- input to factory-postmortem: a run JSON or a gate verdict ----------------------------

RUN_STATUSES = ("ok", "failed", "timeout", "budget", "error", "stuck")
RECORD_RE = re.compile(r"^refs/factory/runs/[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
MAX_REASON_CHARS = 64 * 1024
MAX_OUTPUT_TAIL_BYTES = 256 * 1024
MAX_CHECKS = 256


def _nullable(field: str, value, check):
    return None if value is None else check(field, value)


def _one_line(field: str, value, max_chars: int = 255) -> str:
    return _text(field, value, max_chars=max_chars, single_line=True)


def _record(field: str, value) -> str:
    if not isinstance(value, str) or not RECORD_RE.match(value):
        raise ContractError(field, f"{quote(value)} is not a run record (refs/factory/runs/<run id>)")
    return value


def _run_id(field: str, value) -> str:
    if not isinstance(value, str) or not RUN_ID_RE.match(value):
        raise ContractError(field, f"{quote(value)} is not a run id")
    return value


def _issue_id(field: str, value) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ContractError(field, f"{quote(value)} is not a full issue id (12 hex digits)")
    return value


def _flag(field: str, value, default=None) -> bool:
    if value is None and default is not None:
        return default
    if not isinstance(value, bool):
        raise ContractError(field, "must be true or false")
    return value


def _gate_check(n: int, value) -> dict:
    f = f"checks[{n}]"
    if not isinstance(value, dict):
        raise ContractError(f, "must be an object with name, ok and output_tail")
    _one_line(f"{f}.name", value.get("name"), 1000)
    _nullable(f"{f}.kind", value.get("kind"), _one_line)
    _nullable(f"{f}.command", value.get("command"), lambda k, v: _text(k, v, max_bytes=MAX_BODY_BYTES))
    _nullable(f"{f}.path", value.get("path"), _one_line)
    code = value.get("exit_code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise ContractError(f"{f}.exit_code", "must be a whole number or null")
    _flag(f"{f}.ok", value.get("ok"))
    _flag(f"{f}.timed_out", value.get("timed_out"), default=False)
    _text(f"{f}.output_tail", value.get("output_tail", ""), max_bytes=MAX_OUTPUT_TAIL_BYTES)
    return value


def postmortem_input(obj) -> tuple[str, dict]:
    """One input of factory-postmortem: ("verdict", obj) for a gate verdict (it has a
    "verdict" key), ("run", obj) for a run JSON as factory-spawn prints it. Checks the
    fields factory-postmortem reads (others pass untouched: the shapes only grow);
    raises ContractError naming the first that is wrong."""
    if not isinstance(obj, dict):
        raise ContractError("input", f"must be a JSON object (a run or a gate verdict), not {type(obj).__name__}")
    if "verdict" in obj:
        _choice("verdict", obj["verdict"], VERDICTS)
        if obj.get("kind", "gate") != "gate":
            raise ContractError("kind", f"a verdict's kind is 'gate', not {quote(obj.get('kind'))}")
        _issue_id("issue", obj.get("issue"))
        _oid("head", obj.get("head"))
        _oid("base", obj.get("base"))
        _flag("needs_approval", obj.get("needs_approval"), default=False)
        _text("reason", obj.get("reason"), max_chars=MAX_REASON_CHARS)
        _nullable("title", obj.get("title"), lambda k, v: _one_line(k, v, MAX_TITLE_CHARS))
        _nullable("fingerprint", obj.get("fingerprint"), lambda k, v: _one_line(k, v, MAX_FINGERPRINT_CHARS))
        _nullable("ref", obj.get("ref"), _one_line)
        _nullable("branch", obj.get("branch"), check_branch_name)
        _nullable("run", obj.get("run"), _run_id)
        _nullable("record", obj.get("record"), _record)
        checks = obj.get("checks", [])
        if not isinstance(checks, list) or len(checks) > MAX_CHECKS:
            raise ContractError("checks", f"must be a list of at most {MAX_CHECKS} check results")
        for n, c in enumerate(checks):
            _gate_check(n, c)
        return "verdict", obj
    if "status" in obj and "run" in obj:
        _run_id("run", obj["run"])
        _choice("status", obj["status"], RUN_STATUSES)
        _nullable("kind", obj.get("kind"), lambda k, v: _one_line(k, v, 64))
        _text("reason", obj.get("reason", ""), max_chars=MAX_REASON_CHARS)
        _nullable("issue", obj.get("issue"), _issue_id)
        _nullable("base", obj.get("base"), _oid)
        _nullable("commit", obj.get("commit"), _oid)
        _nullable("ref", obj.get("ref"), _one_line)
        _nullable("record", obj.get("record"), _record)
        _flag("infra", obj.get("infra"), default=False)
        return "run", obj
    raise ContractError("input", "is neither a gate verdict (it has \"verdict\") nor a run (it has \"run\" "
                                 "and \"status\"); pipe in what factory-gate or factory-spawn print")


# -- what a postmortem agent reports (its report_postmortem tool) -------------------------

LESSON_KINDS = ("principle", "prohibition")
POSTMORTEM_SECTIONS = ("what_was_tried", "what_failed", "root_cause", "what_should_have_happened")
POSTMORTEM_REPORT_FIELDS = ("title",) + POSTMORTEM_SECTIONS[:3] + ("contributing_factors",) \
    + POSTMORTEM_SECTIONS[3:] + ("lesson",)
LESSON_FIELDS = ("kind", "title", "text", "check")
MAX_SECTION_BYTES = 8 * 1024
MAX_FACTORS = 10
MAX_FACTOR_CHARS = 1000
MAX_LESSON_TITLE_CHARS = 120
MAX_LESSON_TEXT_BYTES = 4 * 1024
MAX_CHECK_CHARS = 1000


def validate_postmortem_report(obj) -> dict:
    """A postmortem as the postmortem agent reports it, checked whole (every field, its
    type and size; no other field): what it says lands in every later agent's prompt.
    Raises ContractError naming the field."""
    if not isinstance(obj, dict):
        raise ContractError("report", "must be an object")
    unknown = [k for k in obj if k not in POSTMORTEM_REPORT_FIELDS]
    if unknown:
        raise ContractError(unknown[0], f"is not a field of a postmortem ({', '.join(POSTMORTEM_REPORT_FIELDS)})")
    missing = [k for k in POSTMORTEM_REPORT_FIELDS if k not in obj]
    if missing:
        raise ContractError(missing[0], "is missing; a postmortem needs " + ", ".join(POSTMORTEM_REPORT_FIELDS))
    out = {"title": _text("title", obj["title"], max_chars=MAX_TITLE_CHARS, single_line=True,
                          empty_ok=False).strip()}
    for k in POSTMORTEM_SECTIONS:
        out[k] = _text(k, obj[k], max_bytes=MAX_SECTION_BYTES, empty_ok=False).strip()
    factors = obj["contributing_factors"]
    if not isinstance(factors, list) or len(factors) > MAX_FACTORS:
        raise ContractError("contributing_factors", f"must be a list of at most {MAX_FACTORS} strings")
    out["contributing_factors"] = [_text(f"contributing_factors[{n}]", f, max_chars=MAX_FACTOR_CHARS,
                                         empty_ok=False).strip() for n, f in enumerate(factors)]
    lesson = obj["lesson"]
    if not isinstance(lesson, dict):
        raise ContractError("lesson", "must be an object with " + ", ".join(LESSON_FIELDS))
    unknown = [k for k in lesson if k not in LESSON_FIELDS]
    if unknown:
        raise ContractError(f"lesson.{unknown[0]}", f"is not a field of a lesson ({', '.join(LESSON_FIELDS)})")
    missing = [k for k in LESSON_FIELDS if k not in lesson]
    if missing:
        raise ContractError(f"lesson.{missing[0]}", "is missing (check may be null)")
    check = lesson["check"]
    if check is not None:
        check = _text("lesson.check", check, max_chars=MAX_CHECK_CHARS, single_line=True, empty_ok=False).strip()
    out["lesson"] = {
        "kind": _choice("lesson.kind", lesson["kind"], LESSON_KINDS),
        "title": _text("lesson.title", lesson["title"], max_chars=MAX_LESSON_TITLE_CHARS, single_line=True,
                       empty_ok=False).strip(),
        "text": _text("lesson.text", lesson["text"], max_bytes=MAX_LESSON_TEXT_BYTES, empty_ok=False).strip(),
        "check": check,
    }
    return out


# -- finding (output of factory-sense; input to `factory-issue file`) ---------------------

FINDING_VERSION = 1
SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_PRIORITY = {"critical": 0, "high": 1, "medium": 2, "low": 3}
# Fields only a finding has: one of them on a line of `factory-issue file` makes it a finding.
FINDING_ONLY_FIELDS = ("severity", "evidence", "reproduction", "target", "commit", "run", "confirmed")
FINDING_FIELDS = ("v", "title", "body", "severity", "fingerprint", "source") + FINDING_ONLY_FIELDS[1:]
MAX_EVIDENCE_BYTES = 64 * 1024
MAX_REPRODUCTION_BYTES = 16 * 1024
FINDING_SOURCE_RE = re.compile(r"^(sensor|adversary):[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
TARGET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}\Z")


def is_finding(obj) -> bool:
    return isinstance(obj, dict) and any(k in obj for k in FINDING_ONLY_FIELDS)


def validate_finding(obj) -> dict:
    """A finding as factory-sense prints it, normalised; raises ContractError naming the
    field. Draft fields (labels, priority, ...) may ride along and are kept."""
    if not isinstance(obj, dict):
        raise ContractError("finding", f"must be a JSON object, not {type(obj).__name__}")
    unknown = [k for k in obj if k not in FINDING_FIELDS and k not in DRAFT_FIELDS and k not in STORE_FIELDS]
    if unknown:
        raise ContractError(unknown[0], f"is not a field of a finding (fields: {', '.join(FINDING_FIELDS)})")
    for k in ("title", "severity", "fingerprint", "source"):
        if obj.get(k) is None:
            raise ContractError(k, "is missing; a finding needs title, severity, fingerprint and source")
    out = {"v": FINDING_VERSION}
    out["title"] = _field("title", obj["title"])
    out["body"] = _field("body", obj.get("body", ""))
    out["severity"] = _choice("severity", obj["severity"], SEVERITIES)
    out["fingerprint"] = _field("fingerprint", obj["fingerprint"])
    if not isinstance(obj["source"], str) or not FINDING_SOURCE_RE.match(obj["source"]):
        raise ContractError("source", f"{quote(obj['source'])} must be 'sensor:NAME' or 'adversary:NAME'")
    out["source"] = obj["source"]
    out["evidence"] = _text("evidence", obj.get("evidence") or "", max_bytes=MAX_EVIDENCE_BYTES)
    repro = obj.get("reproduction")
    out["reproduction"] = None if repro is None else _text("reproduction", repro, max_bytes=MAX_REPRODUCTION_BYTES,
                                                           empty_ok=False)
    target = obj.get("target")
    if target is not None and (not isinstance(target, str) or not TARGET_RE.match(target)):
        raise ContractError("target", f"{quote(target)} must be a branch name such as main or factory/7f3a5c2e9b1d")
    out["target"] = target
    out["commit"] = _nullable("commit", obj.get("commit"), _oid)
    out["run"] = _nullable("run", obj.get("run"), _run_id)
    confirmed = obj.get("confirmed")
    if confirmed is not None and not isinstance(confirmed, dict):
        raise ContractError("confirmed", "must be null or an object (the reproduction's re-run)")
    out["confirmed"] = confirmed
    out.update({k: obj[k] for k in DRAFT_FIELDS if k in obj and k not in out})  # labels, priority, ...
    return out


def fence(text: str, info: str = "") -> str:
    """`text` as a markdown code block whose fence no line of it can close."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


REPRODUCTION_HEADING = "## Reproduction"


def draft_from_finding(finding: dict) -> dict:
    """The issue draft a (validated) finding files as: severity becomes the priority
    (critical 0 .. low 3; a priority given wins) and a label severity:X; evidence and
    reproduction go into the body under headings; the target becomes a label target:T.
    Other finding-only fields are dropped."""
    draft = {k: finding[k] for k in DRAFT_FIELDS if k in finding}
    draft.setdefault("priority", SEVERITY_PRIORITY[finding["severity"]])
    labels = list(draft.get("labels", []))
    extra = [f"severity:{finding['severity']}"]
    if finding.get("target") and LABEL_RE.match(f"target:{finding['target']}"):
        extra.append(f"target:{finding['target']}")
    draft["labels"] = labels + [x for x in extra if x not in labels]
    parts = [finding["body"].rstrip()] if finding["body"].strip() else []
    if finding["evidence"].strip():
        parts.append("## Evidence\n\n" + fence(finding["evidence"]))
    if finding["reproduction"]:
        parts.append(f"{REPRODUCTION_HEADING}\n\nA command that exits non-zero while the problem is there:\n\n"
                     + fence(finding["reproduction"], "sh"))
    seen = [f"target {finding['target']}" if finding.get("target") else None,
            f"commit {finding['commit']}" if finding.get("commit") else None,
            f"run {finding['run']}" if finding.get("run") else None]
    if any(seen):
        parts.append("## Seen on\n\n" + ", ".join(x for x in seen if x))
    body = "\n\n".join(parts) + ("\n" if parts else "")
    if len(body.encode()) > MAX_BODY_BYTES:  # the evidence is what gives way: its end is kept by the caller
        body = body.encode()[:MAX_BODY_BYTES - 64].decode("utf-8", "ignore") + "\n\n[... cut to fit an issue]\n"
    draft["body"] = body
    return draft


def reproduction_of(body: str) -> str | None:
    """The reproduction draft_from_finding put into an issue's body, or None."""
    head, sep, rest = body.rpartition(REPRODUCTION_HEADING + "\n")  # ours is the last: a body may quote one
    if not sep:
        return None
    m = re.search(r"^(`{3,})sh\n(.*?)\n\1$", rest, re.S | re.M)
    return m.group(2) if m else None
