"""The gate: may this branch merge? A verdict on the merge result, never on the branch alone.

For an issue in review, the gate computes what merging its branch into the default
branch gives (in the object store, no checkout), then judges that tree:

1. work:   the branch must change something main does not have ("no work" otherwise);
2. merge:  it must merge without conflicts;
3. policy: it may not change the intent layer's rules (intent/principles/,
           intent/prohibitions/), factory.yaml or a file the checks run, unless its
           issue came from factory-postmortem or a person approved its head
           (`factory approve ID`);
4. checks: `gate.checks`, or the repository's detected test command, then every
           prohibition's `check:`, all in one fresh hardened container at the top of
           the merge result, with FACTORY_BASE and FACTORY_HEAD set;
5. trust:  an issue from an untrusted source passes only once a person approved its
           head: until then a verdict that is otherwise a pass says needs_approval.

What judges a branch comes from the base, never from the branch: main's committed
factory.yaml and main's prohibitions. The verdict is recorded under refs/factory/runs/
and, by `settle`, on the issue: a pass keeps it in review; a refusal sends it back to a
worker with the verdict as a comment, one attempt charged (failed past budgets.attempts).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time

from . import checkrun, config, contracts, intent, runs
from .gitstore import Repo
from .issues import IssueStore, make_event
from .redact import Redactor

# Paths an agent's branch may not change on its own (see the module's docstring).
PROTECTED_PREFIXES = (f"{intent.INTENT_DIR}/principles/", f"{intent.INTENT_DIR}/prohibitions/")
PROTECTED_FILES = (config.CONFIG_NAME,)

# How the test command is found when gate.checks is empty: the first that matches wins.
# (what to look for at the top of the merge result, the command, why it was chosen)
PYTHON_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", "pytest.ini", "tox.ini")
PYTHON_TESTS = ("if python3 -c 'import pytest' 2>/dev/null; then python3 -m pytest -q; "
                "else PYTHONPATH=. python3 -m unittest discover -s {dir} -v; fi")
DETECTION_ORDER = ("Makefile with a test target: make test",
                   "package.json with a test script: npm test",
                   "Cargo.toml: cargo test",
                   "go.mod: go test ./...",
                   "Python (pyproject.toml, setup.py, setup.cfg, pytest.ini, tox.ini, a tests/ "
                   "directory or a test_*.py at the top): pytest if the image has it, else unittest",
                   "none of these: no test command; set gate.checks in factory.yaml")


class GateError(Exception):
    """No verdict could be reached (the base is gone, the checks could not run): the
    factory's trouble, never held against the branch."""


def default_ref(repo: Repo) -> str:
    head = repo.git("symbolic-ref", "-q", "HEAD", check=False).decode().strip()
    return head or "refs/heads/main"


# -- choosing the checks ----------------------------------------------------------------

def detect_test_command(repo: Repo, commit: str) -> tuple[str | None, str]:
    """(command, why) for the repository's tests at `commit`, in DETECTION_ORDER."""
    top = set(repo.top_level(commit))

    def text(name: str) -> str:
        return repo.read_tree(commit, name).get(name, b"").decode("utf-8", errors="replace")

    for makefile in ("GNUmakefile", "makefile", "Makefile"):
        if makefile in top and re.search(r"^test\s*:", text(makefile), re.M):
            return "make test", f"{makefile} has a test target"
    if "package.json" in top:
        try:
            script = (json.loads(text("package.json")).get("scripts") or {}).get("test")
        except (ValueError, AttributeError):
            script = None
        if isinstance(script, str) and "no test specified" not in script:
            return "npm test", "package.json has a test script"
    if "Cargo.toml" in top:
        return "cargo test", "Cargo.toml"
    if "go.mod" in top:
        return "go test ./...", "go.mod"
    markers = [m for m in PYTHON_MARKERS if m in top]
    markers += sorted(n for n in top if re.fullmatch(r"test_.*\.py|.*_test\.py", n))[:1]
    test_dir = next((d for d in ("tests", "test") if d in top), None)
    if markers or test_dir:
        return PYTHON_TESTS.format(dir=test_dir or "."), "Python: " + ", ".join(markers + ([test_dir + "/"] if test_dir else []))
    return None, "no test command found (set gate.checks in factory.yaml)"


def base_config(repo: Repo, base: str, fallback: dict) -> dict:
    """main's committed factory.yaml: what judges a branch is never the branch's own.
    Without one, the defaults; an invalid one is the factory's trouble (GateError)."""
    raw = repo.read_tree(base, config.CONFIG_NAME).get(config.CONFIG_NAME)
    if raw is None:
        return fallback
    try:
        return config.parse(raw.decode("utf-8", errors="replace"), name=f"{config.CONFIG_NAME} at {base[:12]}")
    except config.ConfigError as e:
        raise GateError(f"main's factory.yaml is invalid, so the gate cannot know its checks: {e.problems[0]}")


def protected_paths(changed: list[str], base_files: set[str], commands: list[str]) -> list[str]:
    """Which of `changed` the policy protects: the intent layer's rules, factory.yaml, and
    every file of the base that a check's command names (a script the gate runs)."""
    named = set()
    for command in commands:
        try:
            words = shlex.split(command, comments=True)
        except ValueError:
            words = command.split()
        for w in words:
            w = w[2:] if w.startswith("./") else w
            if w in base_files:
                named.add(w)
    return [p for p in changed if p.startswith(PROTECTED_PREFIXES) or p in PROTECTED_FILES or p in named]


# -- the verdict ------------------------------------------------------------------------

def _check(name: str, kind: str, ok: bool, output: str, *, command=None, path=None, exit_code=None) -> dict:
    return {"name": name, "kind": kind, "command": command, "path": path, "exit_code": exit_code, "ok": ok,
            "timed_out": False, "output_tail": checkrun.printable(output), "seconds": 0.0}


_VOLATILE = [(re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-f]{7,64}\b"), "H"),   # addresses, commit ids
             (re.compile(r"/tmp/[^\s:'\"]*"), "/tmp/P"),
             (re.compile(r"\d+(\.\d+)?"), "N")]                       # counts, times, line numbers
_SIGNAL = re.compile(r"(FAIL|ERROR|Error|error:|assert|Traceback|panicked|not ok)")


def fingerprint(check: dict) -> str:
    """The root cause of a refusal, stable across runs: which check failed, and the
    lines of its output that say how, with numbers, ids and temporary paths taken out."""
    lines = [ln.strip() for ln in (check.get("output_tail") or "").splitlines() if ln.strip()]
    telling = [ln for ln in lines if _SIGNAL.search(ln)] or lines[-3:]
    norm = []
    for ln in telling:
        for pattern, repl in _VOLATILE:
            ln = pattern.sub(repl, ln)
        norm.append(ln)
    key = "\0".join([check["kind"], check["name"], check.get("command") or "", *sorted(set(norm))[:8]])
    return "gate:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def judge(repo: Repo, cfg: dict, issue: dict, *, ref: str | None = None, base: str | None = None,
          log=None) -> dict:
    """The verdict on `issue`'s branch merged into `ref` (default: the checked-out
    default branch) at commit `base` (default: where `ref` is now). Recorded under
    refs/factory/runs/; the issue itself is not changed (see settle)."""
    log = log or (lambda msg: None)
    t0 = time.monotonic()
    ref = ref or default_ref(repo)
    base = base or repo.resolve(ref)
    if base is None:
        raise GateError(f"'{ref}' is not a commit in {repo.git_dir}: nothing to merge into")
    branch = issue.get("branch")
    head = repo.resolve("refs/heads/" + branch) if branch else None
    verdict = {"v": 1, "kind": "gate", "issue": issue["id"], "title": issue.get("title", ""), "verdict": "refuse",
               "reason": "", "ref": ref, "base": base, "head": head, "branch": branch, "merge": None,
               "checks": [], "detected": None, "fingerprint": None, "needs_approval": False,
               "run": runs.new_run_id(), "record": None, "started": contracts.now_iso(), "ended": None,
               "settled": False, "timings": {}}
    checks = verdict["checks"]
    approved = _approved(issue, head)
    # The container starts now, beside the merge and the policy: most branches need it.
    box_deadline = cfg["gate"]["timeout_seconds"] + 300
    box = checkrun.CheckBox(repo, cfg, kind="gate", deadline_s=box_deadline, log=log) \
        if head and not repo.is_ancestor(head, base) else None
    try:
        merge = _merge_result(repo, issue, base, head, checks)
        if merge is not None:
            verdict["merge"] = merge
            jcfg = base_config(repo, base, cfg)
            commands, verdict["detected"] = _gate_commands(repo, jcfg, merge)
            prohibitions = intent.prohibitions(repo.read_tree(base, f"{intent.INTENT_DIR}/prohibitions/"))
            if _policy(repo, issue, base, merge, commands + [p["check"] for p in prohibitions if p["check"]],
                       approved, checks):
                todo = [{"name": c, "command": c, "kind": "check", "path": None} for c in commands]
                todo += [{"name": p["title"], "command": p["check"], "kind": "prohibition", "path": p["path"]}
                         for p in prohibitions if p["check"]]
                t_checks = time.monotonic()
                timeout = min(jcfg["gate"]["timeout_seconds"], box_deadline - 60)
                results = box.run(merge, todo, env={"FACTORY_BASE": base, "FACTORY_HEAD": head},
                                  timeout_s=timeout) if todo else []
                verdict["timings"]["checks_s"] = round(time.monotonic() - t_checks, 3)
                for want, got in zip(todo, results):
                    checks.append({**got, "kind": want["kind"], "path": want["path"]})
                if all(c["ok"] for c in checks) and issue.get("trust") == "untrusted" and not approved:
                    checks.append(_check("approval", "policy", False, "this issue came from an untrusted source "
                                         f"({issue.get('source')}): its work merges only once a person has read and "
                                         f"approved it (factory review; factory approve {issue['id']})"))
                    verdict["needs_approval"] = True
    except checkrun.CheckRunError as e:
        raise GateError(f"the checks could not run: {e}") from e
    finally:
        if box is not None:
            box.close()
    failed = [c for c in checks if not c["ok"]]
    if not failed:
        verdict["verdict"] = "pass"
        verdict["reason"] = f"{len(checks)} check(s) passed" if checks else "nothing to check"
    else:
        first = failed[0]
        verdict["reason"] = _describe(first)
        verdict["fingerprint"] = None if verdict["needs_approval"] else fingerprint(first)
    verdict["ended"] = contracts.now_iso()
    verdict["timings"]["total_s"] = round(time.monotonic() - t0, 3)
    # The checks ran the branch's code: whatever it printed is redacted before the verdict
    # reaches the record, the issue's comment or stdout.
    verdict = Redactor().clean(verdict)
    _record(repo, verdict, log)
    return verdict


def is_lesson(issue: dict) -> bool:
    """An issue factory-postmortem filed for a lesson's branch."""
    return str(issue.get("source", "")).startswith("postmortem:") and issue.get("trust") == "trusted"


def _approved(issue: dict, head: str | None) -> bool:
    """A person approved this head (or the issue as such, before any work)."""
    a = issue.get("approved")
    return bool(a) and (a.get("head") is None or a.get("head") == head)


def _merge_result(repo: Repo, issue: dict, base: str, head: str | None, checks: list) -> str | None:
    """The commit that would land (the head itself when main can fast-forward to it,
    else a merge commit), or None with the refusal appended to `checks`."""
    if head is None:
        checks.append(_check("work", "merge", False, f"the issue has no branch with work on it "
                             f"({issue.get('branch') or 'no branch'}): no work to merge"))
        return None
    if repo.is_ancestor(head, base):
        checks.append(_check("work", "merge", False, "no work: the branch adds nothing its base does not have"))
        return None
    if repo.is_ancestor(base, head):
        merge = head
    else:
        tree, conflicts = repo.merge_tree(base, head)
        if tree is None:
            checks.append(_check("merge", "merge", False, "the branch does not merge cleanly with main; "
                                 "conflicts in: " + ", ".join(conflicts[:50])))
            return None
        merge = repo.commit_tree(tree, [base, head], f"Merge {issue.get('branch')}: {issue.get('title', '')}\n\n"
                                                     f"Issue {issue['id']}, judged by factory-gate.\n")
    if repo.tree_of(merge) == repo.tree_of(base):
        checks.append(_check("work", "merge", False, "no work: merged, the branch changes no file of main"))
        return None
    checks.append(_check("merge", "merge", True, "fast-forward" if merge == head else "merges cleanly"))
    return merge


def _gate_commands(repo: Repo, jcfg: dict, merge: str) -> tuple[list[str], str]:
    if jcfg["gate"]["checks"]:
        return list(jcfg["gate"]["checks"]), "gate.checks in factory.yaml"
    command, why = detect_test_command(repo, merge)
    return ([command] if command else []), "detected: " + why


def _policy(repo: Repo, issue: dict, base: str, merge: str, commands: list[str], approved: bool,
            checks: list) -> bool:
    """The built-in policy; False (with the refusal appended) stops the verdict here."""
    changed = repo.changed_paths(base, merge)
    touched = protected_paths(changed, set(repo.tracked_paths(base)), commands)
    lesson = is_lesson(issue)
    if touched and not (lesson or approved):
        checks.append(_check("protected-paths", "policy", False,
                             "the branch changes what judges it: " + ", ".join(touched[:20])
                             + ". Only a lesson from factory-postmortem, or work a person approved "
                               f"(factory approve {issue['id']}), may change intent/principles/, "
                               "intent/prohibitions/, factory.yaml or a file the checks run."))
        return False
    checks.append(_check("protected-paths", "policy", True,
                         ("changes " + ", ".join(touched[:20]) + (" (a lesson)" if lesson else " (approved)"))
                         if touched else "changes no protected path"))
    return True


def _describe(check: dict) -> str:
    if check["kind"] in ("check", "prohibition"):
        what = "prohibition " + check["path"] if check["kind"] == "prohibition" else "check"
        how = "timed out" if check["timed_out"] else ("was not run" if check["exit_code"] is None
                                                      else f"exited {check['exit_code']}")
        return f"{what} `{check['command']}` {how}"
    first_line = (check["output_tail"] or "").splitlines()[0] if check["output_tail"] else ""
    return f"{check['kind']} {check['name']}: {first_line}"[:300]


def _record(repo: Repo, verdict: dict, log) -> None:
    from .gitstore import GitError, RefConflict
    text = "\n".join(f"{c['kind']} {c['name']}: {'ok' if c['ok'] else 'FAILED'}\n{c['output_tail']}\n"
                     for c in verdict["checks"])
    record = {**verdict, "status": verdict["verdict"], "record": runs.RUNS_PREFIX + verdict["run"]}
    try:
        runs.record(repo, record, [], text, Redactor(),
                    verdict["merge"] if verdict["merge"] and verdict["merge"] != verdict["head"] else None)
        verdict["record"] = record["record"]
    except (GitError, RefConflict) as e:
        log(f"could not record the verdict: {e}")


# -- the issue --------------------------------------------------------------------------

def comment_text(verdict: dict) -> str:
    """The verdict as a comment a worker can start from: what failed, how, its output."""
    head = verdict["head"][:12] if verdict["head"] else "none"
    said = {"pass": "passed", "refuse": "refused"}[verdict["verdict"]]
    lines = [f"factory-gate {said} head {head} (merged into {verdict['ref']} at "
             f"{verdict['base'][:12]}): {verdict['reason']}"]
    for c in verdict["checks"]:
        if c["ok"]:
            continue
        what = f"`{c['command']}`" if c["command"] else c["name"]
        code = "timed out" if c["timed_out"] else f"exit {c['exit_code']}" if c["exit_code"] is not None else ""
        lines.append(f"\n{c['kind']} {what}" + (f" ({c['path']})" if c["path"] else "") + (f": {code}" if code else ""))
        if c["output_tail"]:
            lines.append(checkrun.tail(c["output_tail"], 1500))
    if verdict["detected"]:
        lines.append(f"\n(test command: {verdict['detected']}; record {verdict['record']})")
    return "\n".join(lines)[:contracts.MAX_COMMENT_BYTES // 4]


def issue_verdict(verdict: dict) -> dict:
    """What the issue keeps of a verdict (contracts.ISSUE_VERDICT_KEYS)."""
    return contracts._field("verdict", {
        "verdict": verdict["verdict"], "head": verdict["head"], "base": verdict["base"],
        "fingerprint": verdict["fingerprint"], "record": verdict["record"], "at": verdict["ended"],
        "summary": checkrun.printable(verdict["reason"])[:1000], "needs_approval": verdict["needs_approval"]})


class Stale(Exception):
    """The issue moved on since it was judged (another head, another state)."""


def settle(store: IssueStore, verdict: dict, budgets: dict, actor: str, extra=None) -> dict:
    """Put the verdict on its issue in one compare-and-swap, only while the issue is still
    in review at the head that was judged (else Stale: a newer head gets its own
    verdict). A pass keeps it in review; a verdict that waits for approval too; a
    refusal sends it back to open with the verdict as a comment and one attempt
    charged (failed past budgets.attempts, not ready again before the back-off).
    `extra(cur, last)`: more events for the same change (the merge queue's `done`)."""
    from datetime import datetime, timedelta, timezone

    def events(cur, last):
        if cur["state"] != "review" or not verdict["head"] or \
                store.repo.resolve("refs/heads/" + (cur.get("branch") or "-")) != verdict["head"]:
            raise Stale(f"issue {cur['id']} is {cur['state']} at another head since it was judged")
        fields = {"verdict": issue_verdict(verdict)}
        # A lesson is refused only because main itself fails its checks (it changes nothing
        # but intent/): it waits in review, uncharged, and is judged again when main moves.
        refused = verdict["verdict"] == "refuse" and not verdict["needs_approval"] and not is_lesson(cur)
        if refused:
            attempts = cur["attempts"] + 1
            wait = budgets["retry_backoff_seconds"] * 2 ** (attempts - 1)
            fields.update(state="failed" if attempts >= budgets["attempts"] else "open", attempts=attempts,
                          claimed_by=None, not_before=(datetime.now(timezone.utc) + timedelta(seconds=wait))
                          .strftime("%Y-%m-%dT%H:%M:%S.%fZ") if wait else None)
        evs = [make_event("set", actor, after=last, fields=fields)]
        evs.append(make_event("runs", actor, after=evs[-1]["at"], add=[verdict["run"]]))
        if verdict["verdict"] == "refuse":
            evs.append(make_event("comment", actor, after=evs[-1]["at"],
                                  text=contracts.validate_comment(checkrun.printable(comment_text(verdict)))))
        if extra:
            evs += extra(cur, evs[-1]["at"])
        return evs

    issue = store.change(verdict["issue"], events)
    verdict["settled"] = True
    return issue
