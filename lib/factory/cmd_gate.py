"""factory-gate: may this branch merge? One verdict per issue, on the merge result."""

from __future__ import annotations

import sys

import click

from . import contracts, exits
from .cli import CONTEXT_SETTINGS, BadInput, Failed, emit, open_repo, read_json_lines, repo_option, run_main, \
    stdin_is_data

TOOL = "factory-gate"


@click.command(context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Input: issue ids as arguments, or issues as JSON lines on stdin, exactly as
`factory-issue list --state review` prints them (only their id is read: the issue is
read again from the store). An issue that is not in review is skipped, saying so.

\b
What it checks, on the merge result (main plus the branch, built in the object store;
never the branch alone), in a fresh hardened container with no network:
  work     the branch adds something main does not have (else: "no work")
  merge    it merges without conflicts (the conflicting paths are named)
  policy   it changes none of intent/principles/, intent/prohibitions/, factory.yaml or
           a file the checks run, unless its issue came from factory-postmortem or a
           person approved its head (factory approve ID)
  checks   gate.checks from main's factory.yaml, each must exit 0; if empty, the test
           command detected at the top of the merge result: a Makefile test target, an
           npm test script, Cargo.toml, go.mod, then Python (pytest if the image has it,
           else unittest); none found: no test runs, and the verdict says so
  prohibitions  every `check:` of main's intent/prohibitions/*.md, with FACTORY_BASE
           and FACTORY_HEAD set to the base and the branch's head
  trust    an issue from an untrusted source passes only once a person approved its
           head; until then the verdict is refuse with needs_approval: true
All of them come from main, never from the branch being judged.

\b
What it changes: the verdict is recorded under refs/factory/runs/<run> and put on the
issue, only while the issue is still in review at the judged head. A pass leaves it in
review (factory merge ID, or the merge queue with merge: auto, lands it). A refusal
sends it back to open with the verdict as a comment (the failing check, its exit code
and the tail of its output), charges one attempt, and marks it failed past
budgets.attempts; the next worker's first message starts from that verdict. One that
needs approval stays in review, uncharged. --no-settle judges without changing the issue.

\b
Output: one verdict JSON per issue: issue, verdict (pass|refuse), reason, ref, base, head,
branch, merge (the commit that would land), checks [{{name, kind, command, path,
exit_code, ok, timed_out, output_tail, seconds}}], detected, fingerprint (the root cause
of a refusal), needs_approval, run, record, settled, started, ended, timings.

\b
Exit codes:
  0    every issue judged passed
  1    at least one was refused (or waits for approval)
  2    usage or bad input: an unknown issue, input that is not issues; nothing was judged
  5    a verdict could not be reached (no Docker engine, no image, main's factory.yaml
       invalid): the factory's trouble, never held against the branch; that issue is
       left as it was
  {exits.EX_CONFIG}   factory.yaml is invalid; nothing was judged

\b
Examples:
  factory-gate 7f3a5c2e9b1d
  factory-issue list --state review | factory-gate | jq -r '.issue + " " + .verdict'
  factory-issue list --state review | factory-gate | factory-postmortem --failed-only
""")
@click.argument("issue_ids", nargs=-1)
@repo_option
@click.option("--no-settle", is_flag=True, help="Judge only: leave the issues as they are.")
@click.option("-p", "--pretty", is_flag=True, help="Indent the verdict JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def cli(issue_ids, no_settle, pretty, quiet):
    """Judge branches in review: may each merge into main?"""
    from . import config, gate
    from .issues import DamagedIssue, IssueStore, NoSuchIssue, default_actor
    repo = open_repo(TOOL)
    try:
        cfg = config.load(repo.work_tree() or repo.git_dir)
    except config.ConfigError as e:
        raise Failed(TOOL, f"{e}\n(fix factory.yaml; nothing was judged)", code=exits.EX_CONFIG)
    store = IssueStore(repo)
    ids = list(issue_ids) or _ids_from_stdin()
    if not ids:
        raise BadInput(TOOL, "no issue to judge: give ids, or pipe issues in "
                             "(try: factory-issue list --state review | factory-gate)")
    issues = []
    for i in ids:
        try:
            issues.append(store.get(i))
        except (NoSuchIssue, DamagedIssue, ValueError) as e:
            raise BadInput(TOOL, f"{e}; nothing was judged")
    log = (lambda msg: None) if quiet else (lambda msg: print(f"{TOOL}: {msg}", file=sys.stderr, flush=True))
    actor = f"gate:{default_actor()}"
    code = exits.OK
    for issue in issues:
        if issue["state"] != "review":
            log(f"{issue['id']}: skipped: it is {issue['state']}, not in review")
            continue
        try:
            verdict = gate.judge(repo, cfg, issue, log=log)
        except gate.GateError as e:
            print(f"{TOOL}: {issue['id']}: no verdict: {e} (the issue is left as it was)", file=sys.stderr)
            code = exits.GATE_ERROR
            continue
        if not no_settle:
            try:
                gate.settle(store, verdict, cfg["budgets"], actor)
            except gate.Stale as e:
                log(f"{issue['id']}: verdict not put on the issue: {e}")
        log(f"{issue['id']}: {verdict['verdict']}: {verdict['reason']}")
        emit(verdict, pretty=pretty)
        if verdict["verdict"] != "pass" and code == exits.OK:
            code = exits.GATE_REFUSED
    return code


def _ids_from_stdin() -> list[str]:
    if not stdin_is_data():
        return []
    ids = []
    for n, obj in read_json_lines(TOOL, sys.stdin, max_line_bytes=contracts.MAX_LINE_BYTES):
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            ids.append(obj["id"])
        elif isinstance(obj, dict) and isinstance(obj.get("issue"), str):
            ids.append(obj["issue"])  # a verdict or a run JSON names its issue
        else:
            raise BadInput(TOOL, f"stdin line {n}: not an issue (an object with an id, as factory-issue "
                                 "prints it); nothing was judged")
    return ids


def main() -> int:
    return run_main(cli, TOOL)


if __name__ == "__main__":
    sys.exit(main())
