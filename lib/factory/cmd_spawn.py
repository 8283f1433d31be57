"""factory-spawn: one agent, one container, one task (arguments, JSON in and out, exit codes)."""

from __future__ import annotations

import json
import os
import sys

import click

from . import contracts
from .cli import CONTEXT_SETTINGS, BadInput, Failed, emit, open_repo, repo_option, run_main, stdin_is_data
from .exits import INTERRUPTED, SPAWN_CONFIG, SPAWN_NOT_RUN, SPAWN_STATUS

TOOL = "factory-spawn"


@click.command(context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Input: one task as JSON on stdin (or in FILE): {{"kind": "worker"|"sensor"|"adversary",
"issue": {{...}}, "ref": "main", "budgets": {{"turns", "tokens", "cost_usd", "wall_seconds"}},
"model": "..."}}. An issue exactly as factory-issue prints it is a worker task, so
`factory-issue next | factory-spawn` works. An open issue is claimed first; a claimed one
is taken as handed over.

\b
What happens: a fresh clone of the ref outside your checkout; one container (no
network, no capabilities, read-only root, non-root user, memory/CPU/pids limits from
factory.yaml, a deadline it enforces itself) under the runtime sandbox.runtime names
(runc; runsc for gVisor, see docs/runtime.md); the agent loop on this host through the
anthropic SDK (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL; FACTORY_MODEL overrides the model).
The key never enters the container. A worker's commits leave as a git bundle and land
on factory/<issue-id>, the only branch it can change. The run is recorded under
refs/factory/runs/<run-id>; the issue moves to review, or back to open (failed past
budgets.attempts). Container and workspace are removed whatever happens.

\b
Output: one run JSON: run, kind, issue, status, reason, branch, commit, base, findings,
turns, usage (with cache reads and writes), model_retries, cost_usd, infra (the factory's
trouble, not the issue's: not counted as an attempt), started, ended, record, timings.

\b
Exit codes: with a run JSON on stdout, the run's status (judge a run by its JSON: status,
infra, landed); with none, nothing was run.
  0    ok: the agent finished (a worker: its work is on the branch)
  1    failed: the agent finished without work, the container died, or the model refused
  2    usage or bad input: the task itself was refused; nothing was claimed, started or
       recorded: a task that is not JSON (UTF-8, nested at most 64 deep), a malformed
       issue id or model name, a ref that is not a commit here, an issue that does not exist
  3    timeout: the wall time budget ran out
  4    budget: the turn, token or cost budget ran out
  5    error: the model could not be reached after retries, or Docker/git failed; a key
       the API refuses (check ANTHROPIC_API_KEY) is such an error, with infra: true, and
       not counted against the issue
  6    stuck: the agent repeated the same calls without progress
  7    not run: the issue could not be claimed (someone else has it); nothing was done
  {SPAWN_CONFIG}   factory.yaml is invalid or ANTHROPIC_API_KEY is unset: the factory's trouble,
       not the task's; nothing was done (EX_CONFIG)
  {INTERRUPTED}  interrupted before the run began; nothing was done

\b
Examples:
  factory-issue next | factory-spawn
  factory-issue next --claim | factory-spawn | jq -r .status
  echo '{{"kind": "worker", "issue": {{"id": "7f3a5c2e9b1d"}}, "budgets": {{"turns": 20}}}}' | factory-spawn
  factory-issue show 7f3a | factory-spawn --pretty
""")
@click.argument("task_file", required=False, type=click.File("rb"))
@repo_option
@click.option("-p", "--pretty", is_flag=True, help="Indent the run JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def cli(task_file, pretty, quiet):
    """Run one agent on one task in one hardened container."""
    raw = _read_task(task_file)
    try:
        task = contracts.validate_task(raw)
    except contracts.ContractError as e:
        raise BadInput(TOOL, f"task: {e}; nothing was done")
    # The factory's own set-up, not the task's: a code of its own (exits.py), so that no
    # caller blames the issue for it.
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise Failed(TOOL, "ANTHROPIC_API_KEY is not set; the agent loop needs it (it stays on this host)",
                     code=SPAWN_CONFIG)

    from . import config
    from .issues import NoSuchIssue
    repo = open_repo(TOOL)
    try:
        cfg = config.load(repo.work_tree() or repo.git_dir)
    except config.ConfigError as e:
        raise Failed(TOOL, f"{e}\n(fix factory.yaml; nothing was done)", code=SPAWN_CONFIG)
    _check_runnable(task, repo)

    from .spawn import Log, ModelWarmup, NotRun, interrupt_on_signals, model_name_for, run_task
    # Everything that can refuse has been checked. The SDK import is the longest step
    # before the first model request: start it now, beside the rest of the set-up.
    warm = ModelWarmup(model_name_for(task, cfg), cfg["model"]["max_tokens"])
    warm.start()
    interrupt_on_signals()
    try:
        run = run_task(task, repo, cfg, log=Log(echo=not quiet), warm=warm)
    except KeyboardInterrupt:  # before the run began: nothing to record
        raise Failed(TOOL, "interrupted before the run began", code=INTERRUPTED)
    except NotRun as e:
        raise Failed(TOOL, f"not run: {e}", code=SPAWN_NOT_RUN)
    except NoSuchIssue as e:
        raise BadInput(TOOL, f"{e}; nothing was done")
    emit(run, pretty=pretty)
    return SPAWN_STATUS.get(run["status"], SPAWN_STATUS["error"])


def _check_runnable(task, repo):
    """What the task names exists and is well formed, checked before anything is claimed,
    created or recorded: a task that cannot run as given is bad input (exit 2), not a run."""
    from .spawn import default_ref
    from .env import get
    env_model = get("FACTORY_MODEL")
    if env_model and "model" not in task:
        try:
            contracts.check_model_name("FACTORY_MODEL", env_model)
        except contracts.ContractError as e:
            raise BadInput(TOOL, f"{e}; nothing was done")
    if "ref" in task:
        field, ref = "ref", task["ref"]
    elif task["kind"] != "worker" and task.get("issue", {}).get("target"):  # a worker's issue is re-read
        field, ref = "issue.target", task["issue"]["target"]
    else:
        field, ref = "the default ref (HEAD)", default_ref(repo)
    if task["kind"] == "worker":
        from .issues import DamagedIssue, IssueStore, NoSuchIssue
        try:
            IssueStore(repo).get(task["issue"]["id"])
        except (NoSuchIssue, DamagedIssue) as e:
            raise BadInput(TOOL, f"task: issue: {e}; nothing was done")
    if not isinstance(ref, str) or repo.resolve(ref) is None:
        raise BadInput(TOOL, f"task: {field}: {contracts.quote(ref)} is not a commit in this repository "
                             "(give a branch, tag or commit that exists: git rev-parse --verify REF); "
                             "nothing was done")


def _read_task(task_file):
    if task_file is None:
        if not stdin_is_data():
            raise BadInput(TOOL, "no task: pipe one in (try: factory-issue next | factory-spawn)")
        data = sys.stdin.buffer.read(contracts.MAX_LINE_BYTES + 1)
    else:
        data = task_file.read(contracts.MAX_LINE_BYTES + 1)
    if len(data) > contracts.MAX_LINE_BYTES:
        raise BadInput(TOOL, f"the task is over {contracts.MAX_LINE_BYTES} bytes; nothing was done")
    from .cli import JSONInputError, decode_json
    if not data.strip():
        raise BadInput(TOOL, "the task is empty; nothing was done (try: factory-issue next | factory-spawn)")
    try:
        return decode_json(data.strip())  # one JSON document, on one line or pretty-printed
    except JSONInputError as e:
        raise BadInput(TOOL, f"the task is {e}; nothing was done")
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            raise BadInput(TOOL, "more than one task given; factory-spawn runs one agent "
                                 "(loop in the shell for more); nothing was done")
        raise BadInput(TOOL, f"the task is not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                             "nothing was done")


def main() -> int:
    return run_main(cli, TOOL)


if __name__ == "__main__":
    sys.exit(main())
