"""factory-postmortem: failures become postmortems and lessons (arguments, JSON in and out, exit codes)."""

from __future__ import annotations

import sys

import click

from . import contracts
from .cli import (CONTEXT_SETTINGS, BadInput, Failed, emit, open_repo, read_json_lines, repo_option, run_main, say,
                  stdin_is_data)
from .exits import POSTMORTEM_CONFIG, POSTMORTEM_FAILED

TOOL = "factory-postmortem"


@click.command(context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Input: JSON lines on stdin (or in FILES): run JSONs as factory-spawn prints them and
gate verdicts as factory-gate prints them (told apart by the "verdict" key). A failure
is a verdict that refused a branch (not one waiting for approval: needs_approval) or a
run whose status is not ok (not one the factory's own trouble cut: infra). Every line
is checked before anything is written: one bad line, or (without --failed-only) one
that is no failure, refuses the whole input with exit 2 and nothing written.
--failed-only prints every input that is no failure back as it came (the same JSON
object, compact), in order, so that the tool can end a pipe; so too an upstream
filter's record of a line it could not take ({{"ok": false, "error": ...}}). A refusal
of a lesson's own branch (its issue's source is postmortem:...) is no failure: a person
looks at it.

\b
What happens, per failure: its root cause is named by a fingerprint (the verdict's; for
a run, run:<16 hex> of its status and normalised reason). Where that root cause already
has a lesson, the failure is added to its evidence (a recurrence "before" or "after"
the lesson landed: whether the failed agent's starting commit held it) and to its
postmortem's Recurrences, and nothing else is written. Otherwise a postmortem agent
(kind postmortem: a container with the failed commit checked out, budgets from
factory.yaml's postmortem section) writes the postmortem and proposes one lesson; with
no model (ANTHROPIC_API_KEY unset, a model error, a budget out, an unusable answer) or
with --factual, a factual postmortem is written from the record alone and marked so.
A prohibition keeps its check only if the check fails on the failed head and passes on
the base, each run in a fresh container; otherwise it becomes a principle.
The files (intent/principles/ or intent/prohibitions/, and intent/postmortems/) land as
one commit on the branch factory/lesson-<12 hex of the fingerprint's sha256>, made
without a work tree, with an issue in review (source postmortem:<same hex>) for the gate
and then the merge queue (merge: auto) or a person (merge: manual). Main, your work
tree and checked-out branch are never touched. See docs/postmortem.md.

\b
Output: per failure, one postmortem JSON line: v, kind ("postmortem"), fingerprint,
postmortem (its path), lesson (its path), lesson_kind (principle|prohibition), title,
check, factual, why_factual, evidence {{issue, run, record, head, base}}, source (verdict|run),
new_lesson, recurrence (null|before|after), seen (this evidence was recorded before:
nothing written), branch, commit, lesson_issue, postmortem_run, notes,
recurrences_before, recurrences_after. See docs/contracts.md.

\b
Exit codes:
  0   every failure has its postmortem (or joined its lesson's evidence)
  1   some failure could not be written (git or the issue store failed; each is named
      on stderr), or an upstream filter's error record was passed through; the other
      lines were done
  2   usage or bad input: a line that is not JSON, not a run or a verdict, or names a
      commit this repository lacks, or (without --failed-only) is no failure; nothing
      was written
  {POSTMORTEM_CONFIG}  factory.yaml is invalid; nothing was written (EX_CONFIG)

\b
Examples:
  factory-issue list --state review | factory-gate | factory-postmortem --failed-only
  factory-issue next --claim | factory-slot worker -- factory-spawn | factory-postmortem --failed-only
  factory-postmortem --factual verdict.json
  git show refs/factory/runs/RUN:run.json | factory-postmortem
""")
@click.argument("files", nargs=-1, type=click.File("rb"))
@click.option("--failed-only", is_flag=True, help="Pass inputs that are no failure through unchanged.")
@click.option("--factual", is_flag=True, help="Write factual postmortems from the records alone; ask no model.")
@click.option("--by", metavar="ACTOR", help="Who files the lesson issues (default: env FACTORY_ACTOR, "
                                            "else factory-postmortem).")
@repo_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def cli(files, failed_only, factual, by, quiet):
    """Turn failed runs and refused branches into postmortems and lessons."""
    from .postmortem import failure_of, not_a_failure
    items = []  # (line, object, Failure or None)

    def no_failure(where, why_not):
        if not failed_only:
            raise BadInput(TOOL, f"{where}: {why_not} is no failure; nothing was written (pass "
                                 "--failed-only to pass such lines through)")

    for name, n, obj in _inputs(files):
        where = f"{name} line {n}"
        if failed_only and _error_record(obj):
            items.append((where, obj, None))  # an upstream filter's word on a bad line: for the reader
            continue
        try:
            kind, obj = contracts.postmortem_input(obj)
        except contracts.ContractError as e:
            raise BadInput(TOOL, f"{where}: {e}; nothing was written")
        why_not = not_a_failure(kind, obj)
        if why_not:
            no_failure(where, why_not)
        items.append((where, obj, None if why_not else failure_of(kind, obj)))
    repo = store = cfg = None
    if any(f for _, _, f in items):
        repo = open_repo(TOOL)
        from . import config
        try:
            cfg = config.load(repo.work_tree() or repo.git_dir)
        except config.ConfigError as e:
            raise Failed(TOOL, f"{e}\n(fix factory.yaml; nothing was written)", code=POSTMORTEM_CONFIG)
        _check_commits(repo, items)
        from .issues import IssueStore
        store = IssueStore(repo, warn=lambda m: say(TOOL, m))
        for n, (where, obj, f) in enumerate(items):
            if f is not None and _lesson_issue(store, f.issue):
                # A refused lesson is for a person to look at: a lesson about it would be
                # judged by the same gate, and could refuse its way round forever.
                no_failure(where, "the refusal of a lesson's own branch")
                items[n] = (where, obj, None)
    from .env import get
    actor = by or get("FACTORY_ACTOR") or "factory-postmortem"
    log = (lambda m: None) if quiet else (lambda m: say(TOOL, m))
    from .gitstore import GitError, RefConflict
    from .issues import IssueError
    failed = 0
    for where, obj, f in items:
        if f is None:
            emit(obj)
            failed += _error_record(obj)  # the pipe failed upstream: its end says so too
            continue
        try:
            out = _one(repo, store, cfg, f, use_model=not factual, actor=actor, log=log, quiet=quiet)
        except (GitError, RefConflict, IssueError, contracts.ContractError, OSError) as e:
            # one failure's trouble must not lose the others' postmortems
            say(TOOL, f"{where}: no postmortem was written: {e}")
            failed += 1
            continue
        emit(out)
        if not out["seen"]:
            log(f"{where}: {'new lesson' if out['new_lesson'] else 'recurrence ' + out['recurrence']}: "
                f"{out['lesson']} on {out['branch']} (issue {out['lesson_issue']})")
    return POSTMORTEM_FAILED if failed else 0


def _one(repo, store, cfg, f, **kw):
    from . import postmortem
    from .spawn import default_ref
    main_ref = f.ref if f.ref and repo.resolve(f.ref) else default_ref(repo)
    return postmortem.process(repo, store, cfg, f, main_ref=main_ref, **kw)


def _inputs(files):
    """(source name, line number, object) for every JSON line of FILES, or of stdin."""
    sources = list(files)
    if not sources:
        if not stdin_is_data():
            raise BadInput(TOOL, "no input: pipe in runs or verdicts (try: factory-issue list --state review | "
                                 "factory-gate | factory-postmortem --failed-only)")
        sources = [sys.stdin]
    for src in sources:
        name = "stdin" if src is sys.stdin or getattr(src, "name", "-") in ("-", "<stdin>") else src.name
        for n, obj in read_json_lines(TOOL, src, max_line_bytes=contracts.MAX_LINE_BYTES, name=name):
            yield name, n, obj


def _error_record(obj) -> bool:
    """A filter's record for a line it could not take: {"ok": false, "error": ..., "line": N}."""
    return isinstance(obj, dict) and obj.get("ok") is False and isinstance(obj.get("error"), str)


def _lesson_issue(store, issue_id) -> bool:
    from .issues import IssueError
    if not issue_id:
        return False
    try:
        return store.get(issue_id)["source"].startswith("postmortem:")
    except IssueError:
        return False


def _check_commits(repo, items):
    """Every commit a failure names is one of this repository's: else it is another
    repository's output, refused before anything is written."""
    for where, _, f in items:
        if f is None:
            continue
        for what in ("head", "base"):
            oid = getattr(f, what)
            if oid and repo.resolve(oid) is None:
                raise BadInput(TOOL, f"{where}: {what} {oid[:12]} is not a commit in this repository (is it "
                                     "another repository's output? run with -C that repository); nothing was written")


def main() -> int:
    return run_main(cli, TOOL)


if __name__ == "__main__":
    sys.exit(main())
