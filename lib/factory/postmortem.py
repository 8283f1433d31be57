"""Postmortems: what a failed run or a refused branch teaches.

A failure is a gate verdict that refused a branch (not one waiting for a person's
approval) or an agent's run that did not end ok for the task's own reasons (not
`infra`). Its root cause is named by a fingerprint: the verdict's own, or, for a run,
"run:" and 16 hex digits of the sha256 of its status and reason with what varies from
run to run (numbers, hex ids, paths under /tmp) taken out.

The postmortem is written by a model agent (kind "postmortem", through spawn's own
machinery: a container with the failed commit checked out, the failure fenced in its
first message, the report_postmortem tool), or, when no model answers or its answer is
unusable, from the record alone and marked `factual`. Its lesson is a principle, or a
prohibition whose check was seen to fail on the failed head and pass on the base (each
in a fresh container, checkrun.py); a check that does not is dropped and the lesson
kept as a principle. lessons.py lands it, or adds the evidence to the root cause's
existing lesson.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from . import contracts, hidden, lessons
from .gitstore import Repo

EXCERPT_LINES = 15        # of a check's output, in a factual postmortem
EXCERPT_LINE_CHARS = 200
QUOTE_CHARS = 200         # a failing line quoted in a lesson
FAILING_LINE_RE = re.compile(r"(?i)\b(fail(ed|ure|s)?|error|errors|assert\w*|traceback|exception|refused)\b")


# -- what failed -------------------------------------------------------------------------

@dataclass
class Failure:
    source: str                  # "verdict" | "run"
    obj: dict                    # the input as it came
    fingerprint: str
    issue: str | None
    run: str | None              # the gate's run or the agent's run
    record: str | None
    head: str | None             # the failed commit (a run without work: its base)
    base: str | None
    reason: str
    ref: str | None              # where lessons land (a verdict's ref); None: the default branch

    @property
    def failed_checks(self) -> list[dict]:
        return [c for c in self.obj.get("checks") or [] if not c.get("ok")]


def not_a_failure(kind: str, obj: dict) -> str | None:
    """Why a checked input (contracts.postmortem_input) is no failure, or None if it is one."""
    if kind == "verdict":
        if obj["verdict"] == "pass":
            return "a verdict that passed"
        if obj.get("needs_approval"):
            return "a refusal that waits for a person's approval"
        return None
    if obj["status"] == "ok":
        return "a run that ended ok"
    if obj.get("infra"):
        return "a run the factory's own trouble cut (infra: true)"
    if obj.get("kind") == "postmortem":
        return "a postmortem agent's own run"
    return None


def normalise(text: str) -> str:
    """Text with what differs between sightings of one cause taken out."""
    text = re.sub(r"/tmp/\S*", "/tmp/X", text)
    text = re.sub(r"\b[0-9a-fA-F]{7,64}\b", "H", text)
    text = re.sub(r"\d+", "N", text)
    return " ".join(text.split())


def _hash16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_of(kind: str, obj: dict) -> str:
    if kind == "verdict":
        if obj.get("fingerprint"):
            return obj["fingerprint"]
        failed = [c for c in obj.get("checks") or [] if not c.get("ok")]
        first = failed[0]["name"] if failed else ""
        return "gate:" + _hash16(normalise(f"{first}: {obj.get('reason') or ''}"))
    return "run:" + _hash16(normalise(f"{obj['status']}: {obj.get('reason') or ''}"))


def failure_of(kind: str, obj: dict) -> Failure:
    if kind == "verdict":
        return Failure("verdict", obj, fingerprint_of(kind, obj), obj["issue"], obj.get("run"), obj.get("record"),
                       obj["head"], obj["base"], obj.get("reason") or "", obj.get("ref"))
    return Failure("run", obj, fingerprint_of(kind, obj), obj.get("issue"), obj["run"], obj.get("record"),
                   obj.get("commit") or obj.get("base"), obj.get("base"), obj.get("reason") or "", None)


def started_from(repo: Repo, f: Failure) -> str | None:
    """The commit the failed agent started from, whose intent layer it read: a run's base;
    for a verdict, where the branch left the main it was judged against."""
    if f.source == "run":
        return f.base
    return repo.merge_base(f.head, f.base) if f.head and f.base else None


def evidence(f: Failure) -> dict:
    at = f.obj.get("ended")
    try:
        at = contracts.iso_time("ended", at) if at else None
    except contracts.ContractError:
        at = None
    return {"run": f.run, "record": f.record, "issue": f.issue, "head": f.head, "base": f.base,
            "at": at or contracts.now_iso()}


# -- the facts, for the model and for a factual postmortem ------------------------------

def _clean(text: str) -> str:
    return hidden.reveal(text).replace("```", "'''")


def first_failing_line(output: str) -> str:
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    pick = next((line for line in lines if FAILING_LINE_RE.search(line)), lines[-1] if lines else "(no output)")
    pick = _clean(pick).replace("`", "'")
    return pick if len(pick) <= QUOTE_CHARS else pick[:QUOTE_CHARS - 3] + "..."


def excerpt(output: str) -> str:
    lines = (output or "").rstrip("\n").splitlines()[-EXCERPT_LINES:]
    lines = [line if len(line) <= EXCERPT_LINE_CHARS else line[:EXCERPT_LINE_CHARS - 3] + "..." for line in lines]
    return "```\n" + _clean("\n".join(lines) or "(no output)") + "\n```"


def _log_tail(repo: Repo, f: Failure) -> str:
    if f.source != "run" or not f.record:
        return ""
    got = repo.cat_batch([f"{f.record}:log-tail.txt"])[0]
    return got[2].decode("utf-8", errors="replace") if got and got[1] == "blob" else ""


def facts(repo: Repo, f: Failure) -> dict:
    """The failure as the postmortem agent is shown it (roles.postmortem_message)."""
    o = f.obj
    if f.source == "verdict":
        summary = (f"The gate refused the branch {o.get('branch') or '(unnamed)'} of issue {f.issue}: "
                   f"{f.reason}")
        fields = [["branch head (checked out at /workspace/repo)", f.head],
                  [f"base: {o.get('ref') or 'main'}, as judged against", f.base],
                  ["how the test command was chosen", o.get("detected") or "(not said)"]]
        outputs = [{"title": f"{c.get('kind') or 'check'} {c['name']}: `{c.get('command') or c.get('path') or ''}` "
                             f"exited {c.get('exit_code')}" + (" (timed out)" if c.get("timed_out") else ""),
                    "text": c.get("output_tail") or ""} for c in o.get("checks") or []]
    else:
        summary = f"The {o.get('kind') or 'agent'}'s run {f.run} ended {o['status']}: {f.reason}"
        fields = [["started from (base)", f.base], ["its last commit (checked out at /workspace/repo)",
                                                     o.get("commit") or "(none: it left no work)"],
                  ["turns", o.get("turns")], ["branch", o.get("branch")]]
        tail = _log_tail(repo, f)
        outputs = [{"title": "the end of the run's log", "text": tail[-6000:]}] if tail else []
    return {"summary": summary, "fields": [[k, v] for k, v in fields if v is not None], "outputs": outputs}


# -- writing it: the model, or the record alone -----------------------------------------

def factual(f: Failure, issue: dict | None, why: str) -> dict:
    """A postmortem from the record alone (the shape of contracts.validate_postmortem_report)."""
    o = f.obj
    who = f"issue {f.issue}" + (f" ({issue['title']})" if issue else "") if f.issue else "no issue"
    if f.source == "verdict":
        failed = f.failed_checks
        first = failed[0] if failed else None
        tried = (f"The branch {o.get('branch') or '(unnamed)'} (head {f.head[:12]}) for {who} was put to the "
                 f"gate against {o.get('ref') or 'main'} at {f.base[:12]}.")
        what = [f"The gate refused it: {f.reason}"]
        for c in failed:
            cmd = f": `{_short(c['command'], 200)}`" if c.get("command") else ""
            what.append(f"\n- {c.get('kind') or 'check'} `{c['name']}`{cmd} exited {c.get('exit_code')}"
                        + (" (timed out)" if c.get("timed_out") else "")
                        + ":\n\n" + excerpt(c.get("output_tail") or ""))
        lesson, should = _verdict_lesson(f, first)
        cause = ("As recorded: " + (f"`{first['name']}` failed with: {first_failing_line(first.get('output_tail'))}"
                                   if first else _clean(f.reason)))
        factors = [f"`{c['name']}` failed too: {first_failing_line(c.get('output_tail'))}" for c in failed[1:]]
        title = (f"{_about(f, issue)}: the gate refused its branch"
                 + (f" ({first.get('kind') or 'check'} {first['name']})" if first else ""))
    else:
        tried = (f"Run {f.run} ({o.get('kind') or 'agent'}) on {who} started from "
                 f"{(f.base or 'no commit')[:12]}" + (f" and left {o['commit'][:12]} on {o.get('branch')}"
                                                      if o.get("commit") else "") + ".")
        what = [f"The run ended `{o['status']}`: {_clean(f.reason) or '(no reason given)'}"]
        lesson, should = _run_lesson(f)
        cause = f"As recorded: the run ended {o['status']}: {_clean(f.reason) or '(no reason given)'}"
        factors = []
        title = f"{_about(f, issue)}: its {o.get('kind') or 'agent'} run ended {o['status']}"
    return {"title": title[:contracts.MAX_TITLE_CHARS], "what_was_tried": tried, "what_failed": "\n".join(what),
            "root_cause": f"Not determined: no model read this failure ({why}). {cause}",
            "contributing_factors": factors, "what_should_have_happened": should, "lesson": lesson}


def _about(f: Failure, issue: dict | None) -> str:
    if issue:
        return hidden.reveal(" ".join(issue["title"].split()))[:100]
    return f"issue {f.issue}" if f.issue else f"run {f.run}"


def _short(cmd: str, n: int = 60) -> str:
    cmd = " ".join(cmd.split()).replace("`", "'")
    return cmd if len(cmd) <= n else cmd[:n - 3] + "..."


def _verdict_lesson(f: Failure, first: dict | None) -> tuple[dict, str]:
    """A rule for every later agent. It quotes no output of the failed checks: that is
    output of code a model wrote, and a rule lands in every agent's system prompt. The
    postmortem keeps the output, as case law (fenced as data in the prompt, intent.py)."""
    issue = f.issue
    if first is None:
        text = (f"The gate refused the branch of issue {issue}. "
                "Before you finish, check your branch against what the gate checks.")
        return _principle("Check your branch as the gate will before you finish", text), \
            "The branch should have met what the gate checks before it was handed over."
    how = "timed out" if first.get("timed_out") else f"exited {first.get('exit_code')}"
    kind = first.get("kind") or "check"
    if kind == "prohibition" and first.get("path"):
        cmd = _short(first.get("command") or "", 200)
        text = (f"Keep to the prohibition in {first['path']}. Its check `{cmd}` {how} on the branch of issue "
                f"{issue} (its postmortem shows the output). Run that check at the top of the repository "
                "before you finish, and make it pass.")
        return _principle(f"Keep to {os.path.basename(first['path'])}", text), \
            f"The branch should have kept to {first['path']}; its check should have passed before it was handed over."
    if kind == "policy":
        text = (f"The gate refused the branch of issue {issue} because it changed what judges it "
                "(intent/principles/, intent/prohibitions/, factory.yaml, or a file a check runs). Change only "
                "what your issue needs; where it would need one of those changed, say so in your summary "
                "instead of changing it.")
        return _principle("Leave protected paths alone", text), \
            "The branch should have left the protected paths alone."
    if kind == "merge":
        text = (f"The branch of issue {issue} did not merge cleanly into main. Keep changes small and "
                "confined to what the issue needs, so that they merge with what others land meanwhile.")
        return _principle("Keep changes small so that they merge", text), \
            "The branch should have merged cleanly into main."
    cmd = _short(first.get("command") or first["name"], 200)
    text = (f"Before you finish, run `{cmd}` at the top of the repository and make it pass; it {how} on "
            f"the branch of issue {issue} (its postmortem shows the output).")
    return _principle(f"Run {_short(first.get('command') or first['name'])} before you finish", text), \
        f"The branch should have passed `{cmd}` before it was handed to the gate."


RUN_LESSONS = {
    "timeout": ("Work in small steps and commit early",
                "A run on issue {issue} ran out of wall time ({reason}). Work in small steps, commit each "
                "working step, and do not start long-running commands you cannot bound.",
                "The run should have finished, or committed working steps, within its wall time."),
    "budget": ("Spend your budget on the smallest change that works",
               "A run on issue {issue} ran out of budget ({reason}). Read only what the issue needs, make the "
               "smallest change that resolves it, and stop when it is done.",
               "The run should have resolved the issue within its budget."),
    "stuck": ("Change your approach when a command keeps giving the same result",
              "A run on issue {issue} repeated the same calls without progress ({reason}). When a command "
              "gives the same result twice, read its output and try something else.",
              "The run should have changed its approach instead of repeating itself."),
}


def _run_lesson(f: Failure) -> tuple[dict, str]:
    status, reason = f.obj["status"], first_failing_line(f.reason)
    if status in RUN_LESSONS:
        title, text, should = RUN_LESSONS[status]
        return _principle(title, text.format(issue=f.issue, reason=reason)), should
    if "without changing anything" in f.reason:
        return _principle("Resolve the issue with a commit",
                          f"A run on issue {f.issue} finished without changing anything. Resolve the issue "
                          "with a commit; where it cannot be resolved, say why in your summary."), \
            "The run should have ended with a commit that resolves the issue."
    return _principle(f"Avoid: {reason[:100]}",
                      f"A run on issue {f.issue} ended {status}: {reason}. Check for this before you finish."), \
        "The run should have ended ok, with its work committed."


def _principle(title: str, text: str) -> dict:
    return {"kind": "principle", "title": " ".join(title.split())[:contracts.MAX_LESSON_TITLE_CHARS],
            "text": text, "check": None}


def by_model(repo: Repo, cfg: dict, f: Failure, issue: dict | None, *,
             quiet: bool = False) -> tuple[dict | None, str | None, str | None]:
    """(report, why not, the postmortem agent's run id): the model's postmortem, or None
    and why there is none (then a factual one is written)."""
    if not os.environ.get("ANTHROPIC_API_KEY"):
        return None, "no model: ANTHROPIC_API_KEY is not set", None
    if not f.head:
        return None, "no commit to examine: the failure names none", None
    from . import spawn
    budgets = {k: cfg["postmortem"][k] for k in ("turns", "tokens", "cost_usd", "wall_seconds")}
    task = {"kind": "postmortem", "issue": issue, "ref": f.head, "intent": f.base or f.head,
            "budgets": budgets, "postmortem": facts(repo, f)}
    run = spawn.run_task(task, repo, cfg, log=spawn.Log(echo=not quiet, tool="factory-postmortem"))
    if run.get("postmortem"):
        return run["postmortem"], None, run["run"]
    if run["status"] == "ok":
        return None, f"the postmortem agent (run {run['run']}) gave no usable postmortem", run["run"]
    return None, f"the postmortem agent (run {run['run']}) ended {run['status']}: {run['reason']}", run["run"]


def keep_check(repo: Repo, cfg: dict, f: Failure, lesson: dict, log) -> tuple[dict, str | None]:
    """The lesson as it is kept: a prohibition keeps its check only if the check fails on
    the failed head and passes on the base; otherwise it is a principle, and the note
    says why."""
    if lesson["kind"] != "prohibition":
        return dict(lesson, check=None), None
    check = lesson.get("check")
    why = None
    if not check:
        why = "it came without a check"
    elif not f.head or not f.base or f.head == f.base:
        why = "there is no failed commit apart from the base to try its check on"
    else:
        from . import checkrun
        # Run as the gate will run it (its kind's container and limits, FACTORY_BASE and
        # FACTORY_HEAD set), on the head alone: the failure is the head's, and the merge
        # result the gate judged may be gone.
        timeout = cfg["postmortem"]["check_timeout_seconds"]
        try:
            on_head = checkrun.run_checks(repo, cfg, f.head, [{"name": "lesson", "command": check}],
                                          env={"FACTORY_BASE": f.base, "FACTORY_HEAD": f.head},
                                          timeout_s=timeout, log=log)[0]
            if on_head["timed_out"]:
                why = f"its check timed out on the failed head {f.head[:12]}"
            elif on_head["ok"]:
                why = f"its check passed on the failed head {f.head[:12]}, so it does not catch this failure"
            else:
                on_base = checkrun.run_checks(repo, cfg, f.base, [{"name": "lesson", "command": check}],
                                              env={"FACTORY_BASE": f.base, "FACTORY_HEAD": f.base},
                                              timeout_s=timeout, log=log)[0]
                if not on_base["ok"]:
                    why = (f"its check failed on the base {f.base[:12]} too (exit {on_base['exit_code']}), so it "
                           "would refuse every branch")
        except Exception as e:  # checkrun's own errors, the engine's: either way it is unproven
            why = f"its check could not be run ({type(e).__name__}: {e})"
    if why is None:
        return dict(lesson), None
    note = f"proposed as a prohibition with the check `{_short(check or '', 200)}`, kept as a principle: {why}"
    return dict(lesson, kind="principle", check=None), note


# -- the whole of it ---------------------------------------------------------------------

SECTION_TITLES = (("what_was_tried", "What was tried"), ("what_failed", "What failed"),
                  ("root_cause", "Root cause"))


def render(report: dict, lesson: dict, *, factual_why: str | None, notes: list[str]) -> str:
    parts = []
    if factual_why:
        parts.append(f"_Written from the run record alone: {factual_why}._")
    for k, title in SECTION_TITLES:
        parts.append(f"## {title}\n\n{report[k].strip()}")
    factors = "\n".join(f"- {x}" for x in report["contributing_factors"]) or "- none recorded"
    parts.append(f"## Contributing factors\n\n{factors}")
    parts.append(f"## What should have happened\n\n{report['what_should_have_happened'].strip()}")
    kept = f"A {lesson['kind']}: {lesson['title']}."
    if lesson.get("check"):
        kept += f" Its check: `{lesson['check']}`."
    parts.append("## Lesson\n\n" + kept + "".join(f"\n\nNote: {n}." for n in notes))
    return hidden.reveal("\n\n".join(parts))


def process(repo: Repo, store, cfg: dict, f: Failure, *, use_model: bool, main_ref: str, actor: str,
            log, quiet: bool = False) -> dict:
    """One failure: its evidence joins its root cause's lesson, or a new postmortem and
    lesson are written and landed. Returns the postmortem JSON (docs/contracts.md)."""
    from .issues import IssueError
    issue = None
    if f.issue:
        try:
            issue = store.get(f.issue)
        except IssueError:
            issue = None  # the failure still teaches; the issue's text is only context
    made: dict = {}

    def write_new() -> lessons.NewLesson:
        report, why, pm_run = None, "--factual was given", None
        if use_model:
            report, why, pm_run = by_model(repo, cfg, f, issue, quiet=quiet)
            if report is None:
                log(f"writing a factual postmortem instead: {why}")
        is_factual = report is None
        if is_factual:
            report = factual(f, issue, why)
        lesson, note = keep_check(repo, cfg, f, report["lesson"], log)
        if note:
            log(f"the lesson was {note}")
        notes = [note] if note else []
        made.update(why=why if is_factual else None, run=pm_run, notes=notes)
        return lessons.NewLesson(
            fingerprint=f.fingerprint, kind=lesson["kind"], title=hidden.reveal(lesson["title"]),
            text=hidden.reveal(lesson["text"]), check=lesson.get("check"), factual=is_factual,
            postmortem_title=hidden.reveal(report["title"]),
            postmortem_body=render(report, lesson, factual_why=why if is_factual else None, notes=notes),
            postmortem_meta={"written_by": "the run record alone" if is_factual else f"run {pm_run}"},
            notes=notes)

    ev = evidence(f)
    result = lessons.record(repo, store, f.fingerprint, ev, main_ref=main_ref, actor=actor, write_new=write_new,
                            started_from=started_from(repo, f))
    lesson = result.lesson
    return {
        "v": 1, "kind": "postmortem", "fingerprint": f.fingerprint, "postmortem": result.postmortem,
        "lesson": lesson.path, "lesson_kind": lesson.kind, "title": lesson.title,
        "check": lesson.meta.get("check") if lesson.kind == "prohibition" else None,
        "factual": bool(lesson.meta.get("factual")),
        "why_factual": made.get("why") if result.new_lesson else None,
        "evidence": {k: ev[k] for k in ("issue", "run", "record", "head", "base")},
        "source": f.source, "new_lesson": result.new_lesson, "recurrence": result.recurrence,
        "seen": result.seen, "branch": result.branch, "commit": result.commit, "lesson_issue": result.issue,
        "postmortem_run": made.get("run"), "notes": made.get("notes", []),
        "recurrences_before": lessons.count(lesson, "recurrences_before"),
        "recurrences_after": lessons.count(lesson, "recurrences_after"),
    }
