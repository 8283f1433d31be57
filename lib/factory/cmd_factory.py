"""factory: the front end. Built-in verbs for people (init, status); any other verb X runs
the tool `factory-X` found beside this executable or on PATH, as git does, and passes its
exit code through (it replaces this process)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys

import click

from .cli import CONTEXT_SETTINGS, EXIT_NO, BadInput, Failed, emit, load_config, open_repo, repo_option, run_main, say

TOOL = "factory"
BUILTINS = ("init", "status", "image", "start", "stop", "logs", "approve", "review", "merge", "report", "cron")


def tool_path(verb: str) -> str | None:
    """factory-VERB beside this executable first (a checkout's bin/), then on PATH."""
    name = f"factory-{verb}"
    here = os.path.dirname(os.path.realpath(sys.argv[0] or ""))
    candidate = os.path.join(here, name)
    if here and os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
        return candidate
    return shutil.which(name)


class Umbrella(click.Group):
    def format_commands(self, ctx, formatter):
        from .registry import TOOLS
        super().format_commands(ctx, formatter)
        with formatter.section("Tools (factory VERB runs factory-VERB from PATH; see factory-VERB --help)"):
            # the tools this package installs; any other factory-VERB on PATH runs the same way
            formatter.write_dl(sorted((t.verb, f"{t.summary} ({t.name})") for t in TOOLS if t.verb))


@click.group(cls=Umbrella, context_settings=CONTEXT_SETTINGS, epilog="""
\b
Exit codes:
  0  done
  1  failed (status: something needs attention)
  2  usage or bad input; nothing was written
  N  for `factory VERB`, whatever factory-VERB exits with (127: no such tool)

\b
Examples:
  factory init
  factory status
  factory status --json | jq .issues
  factory review
  factory issue list
""")
@click.version_option(package_name="factory", prog_name=TOOL)
def cli():
    """Point factory at a git repository, start it, walk away, come back to finished work."""


def _repo():
    return open_repo(TOOL)


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
Writes factory.yaml (every key documented, with defaults that work) and the intent/
skeleton (principles/, prohibitions/, postmortems/, specs/) at the top of the work
tree. A file that exists is never rewritten, so running init twice changes nothing;
an existing factory.yaml is checked instead. Nothing is committed: review the files,
then commit them.

\b
Exit codes:
  0  done (or nothing to do)
  2  not in a git work tree, or the existing factory.yaml is invalid

\b
Examples:
  git init myproject && cd myproject && factory init
  factory init --json | jq -r '.created[]'
""")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON on stdout.")
@repo_option
def init(as_json):
    """Set up a repository for factory."""
    from . import atomic, config, intent
    repo = _repo()
    top = repo.work_tree()
    if not top:
        raise BadInput(TOOL, f"'{repo.git_dir}' has no work tree; run factory init in a clone with one")
    planned = {config.CONFIG_NAME: config.TEMPLATE, **intent.skeleton_files()}
    created, kept = [], []
    cfg_path = os.path.join(top, config.CONFIG_NAME)
    if os.path.exists(cfg_path):
        try:
            config.load(top)
        except config.ConfigError as e:
            raise BadInput(TOOL, f"{e}\n(fix factory.yaml; nothing was written)")
    for rel, text in planned.items():
        path = os.path.join(top, rel)
        if os.path.exists(path):
            kept.append(rel)
        else:
            atomic.write_text(path, text)
            created.append(rel)
    if as_json:
        emit({"repo": top, "created": created, "unchanged": kept})
    elif created:
        say(TOOL, f"created {', '.join(created)} in {top}")
        say(TOOL, "review them, then: git add factory.yaml intent && git commit -m 'factory init'")
    else:
        say(TOOL, f"nothing to do: {top} is already set up")


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
Reports the config, the Docker engine, the slots and the issues by state; what the
running supervisor waits for, if anything (an invalid factory.yaml, a request that can
never fit); and any kind with ready issues whose request can never fit this machine.

\b
Exit codes:
  0  all is well
  1  something needs attention (invalid config, no Docker engine, damaged issue refs, the
     supervisor waiting, ready work whose request can never fit)
  2  not in a git repository

\b
Examples:
  factory status
  factory status --json | jq '.issues.by_state'
""")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@repo_option
def status(as_json):
    """Show the state of the factory on this repository."""
    from . import config, sandbox
    from .issues import IssueStore
    repo = _repo()
    top = repo.work_tree() or repo.git_dir
    cfg_state = {"path": config.path_for(top), "exists": os.path.exists(config.path_for(top)), "ok": True}
    try:
        cfg = config.load(top)
    except config.ConfigError as e:
        cfg, cfg_state["ok"], cfg_state["errors"] = config.DEFAULTS, False, e.problems
    store = IssueStore(repo)
    issues = store.all()
    by_state: dict[str, int] = {}
    for i in issues:
        by_state[i["state"]] = by_state.get(i["state"], 0) + 1
    pid = _supervisor_pid(repo)
    report = {
        "v": 1, "repo": top, "config": cfg_state, "engine": sandbox.engine_info(),
        "supervisor": {"running": bool(pid), "pid": pid, "waiting": _supervisor_waiting(repo, pid)},
        "slots": _slot_status(repo, cfg),
        "never_fit": _never_fit(cfg, {i["kind"] for i in store.ready(issues)}),
        "issues": {"total": len(issues), "ready": len(store.ready(issues)), "by_state": by_state,
                   "damaged": len(store.damaged)},
        "agents": _agents(repo),
        "sensing": _sensing(repo, store, issues, cfg),
    }
    healthy = (cfg_state["ok"] and report["engine"]["ok"] and not store.damaged and not report["never_fit"]
               and not report["supervisor"]["waiting"])
    if as_json:
        emit(report)
    else:
        _print_status(report)
    return 0 if healthy else EXIT_NO


def _supervisor_waiting(repo, pid) -> str | None:
    """What the running supervisor says it waits for (its supervisor.json), if anything."""
    import json
    from .env import supervisor_status
    if not pid:
        return None
    try:
        with open(supervisor_status(repo)) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return None
    return st.get("waiting") if st.get("pid") == pid else None  # not a dead supervisor's word


def _never_fit(cfg, kinds) -> dict:
    """For each kind with ready issues: why its request can never fit here (slots.py's
    answer, the one factory-slot and the supervisor act on)."""
    from .slots import SlotError, check_fit
    out = {}
    for kind in sorted(kinds):
        try:
            check_fit(cfg, kind)
        except SlotError as e:
            out[kind] = str(e)
    return out


def _config(repo):
    return load_config(TOOL, repo)


def _supervisor_pid(repo) -> int | None:
    """The pid of the supervisor running on this repository, or None."""
    import errno
    import fcntl
    from .env import supervisor_lock
    path = supervisor_lock(repo)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
Keeps the worker slots full: for each ready issue (most urgent first) while the worker
quota has room, it runs `factory-issue next --claim`, then `factory-slot worker --
factory-spawn` with the issue on stdin, as child processes. Before each claim it reads
factory.yaml again and checks that a worker's request can ever fit this machine: if not,
it claims nothing and waits, saying why (also in factory status), until factory.yaml
changes. A spawn is judged by its run JSON, else by the named exit codes of factory-slot
and factory-spawn: an issue is never charged or failed for the factory's own trouble. A
failed issue waits budgets.retry_backoff_seconds, doubled per attempt, up to
budgets.attempts; an issue factory-spawn refuses as a task (exit 2) is marked failed. On start it removes what dead agents left and
re-queues their issues once, without counting an attempt. Only one supervisor runs per
repository. The status is two live lines on a terminal, one line per change otherwise.
Each agent's stderr goes to `factory logs ISSUE`; the run JSON beside it.
With sense.scheduler: supervisor (default: cron, see factory cron --help), it also runs
each sensor and adversary whose schedule comes due while it runs: `factory-slot KIND --
factory-sense -q NAME --file`, output in <state dir>/logs/sense-NAME.log, one run per name
at a time; after a gap only the latest missed time fires. --until-idle waits for no schedule.
SIGTERM (factory stop): no new work, running agents finish (at most 600 s), then exit.
SIGINT twice or SIGUSR1 (factory stop --now): running agents are stopped at once; their
runs are recorded and their issues re-queued uncounted.

\b
Exit codes:
  0   stopped (or, with --until-idle, nothing left to do)
  2   usage or bad input (not a repository, invalid factory.yaml, FACTORY_CPUS or
      FACTORY_MEMORY); nothing was started
  3   a supervisor already runs on this repository
  69  --until-idle: issues are ready but a worker's request can never fit this machine
      (or slots.worker is 0); nothing was claimed (EX_UNAVAILABLE)

\b
Examples:
  factory start
  factory start --detach && factory status
  factory start --until-idle
""")
@click.option("--detach", is_flag=True, help="Run in the background; output to .git/factory/supervisor.log.")
@click.option("--until-idle", is_flag=True, help="Exit when no issue is ready and no agent runs.")
@repo_option
def start(detach, until_idle):
    """Start the supervisor: run agents on ready issues until stopped."""
    import subprocess
    from .env import state_dir
    from .supervisor import EXIT_ALREADY_RUNNING, AlreadyRunning, Supervisor
    from .slots import SlotError, machine
    repo = _repo()
    cfg = _config(repo)
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise BadInput(TOOL, "ANTHROPIC_API_KEY is not set; every agent needs it (it stays on this host)")
    try:
        machine()  # FACTORY_CPUS / FACTORY_MEMORY cannot change while it runs: refuse now
    except SlotError as e:
        raise BadInput(TOOL, str(e))
    pid = _supervisor_pid(repo)
    if pid:
        raise Failed(TOOL, f"a supervisor already runs on this repository (pid {pid}); "
                           "see factory status, or stop it with factory stop", code=EXIT_ALREADY_RUNNING)
    if detach:
        os.makedirs(state_dir(repo), exist_ok=True)
        log_path = os.path.join(state_dir(repo), "supervisor.log")
        args = [sys.executable, os.path.realpath(sys.argv[0]), "start"] + (["--until-idle"] if until_idle else [])
        with open(log_path, "ab") as log:
            child = subprocess.Popen(args, cwd=repo.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True)
        say(TOOL, f"supervisor started in the background (pid {child.pid}); log: {log_path}")
        return 0
    bin_dir = os.path.dirname(os.path.realpath(sys.argv[0]))
    sup = Supervisor(repo, cfg, until_idle=until_idle,
                     bin_dir=bin_dir if os.path.exists(os.path.join(bin_dir, "factory-spawn")) else None)
    try:
        return sup.run()
    except AlreadyRunning as e:
        raise Failed(TOOL, str(e), code=EXIT_ALREADY_RUNNING)


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
Graceful by default: the supervisor starts no new work and waits for running agents
(at most 600 s) before it exits. --now stops running agents at once: each run is
recorded and its issue re-queued without counting an attempt. Waits until the
supervisor has exited.

\b
Exit codes:
  0  the supervisor has stopped
  1  no supervisor runs on this repository, or it did not stop within --timeout
  2  not in a git repository

\b
Examples:
  factory stop
  factory stop --now
""")
@click.option("--now", is_flag=True, help="Stop running agents at once.")
@click.option("--timeout", type=float, default=700.0, show_default=True, help="Seconds to wait for it to exit.")
@repo_option
def stop(now, timeout):
    """Stop the supervisor."""
    import signal
    import time
    repo = _repo()
    pid = _supervisor_pid(repo)
    if not pid or pid < 0:
        raise Failed(TOOL, "no supervisor runs on this repository")
    os.kill(pid, signal.SIGUSR1 if now else signal.SIGTERM)
    say(TOOL, f"asked the supervisor (pid {pid}) to stop{' now' if now else ''}")
    deadline = time.monotonic() + timeout
    while _supervisor_pid(repo):
        if time.monotonic() > deadline:
            raise Failed(TOOL, f"the supervisor (pid {pid}) has not stopped after {timeout:g} s")
        time.sleep(0.2)
    say(TOOL, "stopped")
    return 0


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
With no ISSUE, the supervisor's own log (under --detach). With an issue id (or unique
prefix), that issue's agents' stderr, every run appended. -f keeps following.

\b
Exit codes:
  0  printed
  1  no such log yet
  2  usage or bad input

\b
Examples:
  factory logs
  factory logs 7f3a -f
""")
@click.argument("issue", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended.")
@repo_option
def logs(issue, follow):
    """Show the supervisor's or an agent's log."""
    import time
    from .issues import DamagedIssue, IssueStore, NoSuchIssue
    from .env import state_dir
    repo = _repo()
    if issue:
        store = IssueStore(repo)
        try:
            issue_id = store.get(issue)["id"]
        except NoSuchIssue as e:
            raise BadInput(TOOL, str(e))
        except DamagedIssue as e:
            say(TOOL, str(e))
            issue_id = store.resolve(issue)  # its agent's log is still worth reading
        path = os.path.join(state_dir(repo), "logs", f"{issue_id}.log")
    else:
        path = os.path.join(state_dir(repo), "supervisor.log")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise Failed(TOOL, f"no log yet at {path}")
    with f:
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            elif not follow:
                return 0
            else:
                time.sleep(0.25)


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
Merges one issue in review through the merge queue's own path: the branch is judged by
the gate merged into main as main is now (factory-gate --help), and main moves to
exactly the tested commit by compare-and-swap; if main moved during the test, it is
judged again on the new main. Main never gets a tree that was not tested. A refusal is
put on the issue like any verdict (back to a worker, one attempt charged).

\b
A checked-out main moves only with its work tree, by git's rule for a push to a
checked-out branch (updateInstead): if its work tree and index are clean, they are
updated with the merge, so `git status` stays clean and the files show the merged work;
if not, nothing is touched and the merge waits (exit 1, saying what is in the way).

\b
Exit codes:
  0  merged (or its branch was already on main)
  1  refused by the gate, or waiting (a dirty work tree, main moving under every test)
  2  usage or bad input: no such issue, or it is not in review with a branch
  5  no verdict could be reached (no Docker engine, no image): nothing changed

\b
Examples:
  factory review
  factory merge 7f3a
  factory merge 7f3a --json | jq .verdict.checks
""")
@click.argument("issue")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON: merged, waiting, commit, verdict.")
@repo_option
def merge(issue, as_json):
    """Merge an issue's branch into main: judged on the merge result, then landed."""
    from . import config, exits, gate, mergequeue
    from .issues import DamagedIssue, NoSuchIssue, default_actor
    repo = _repo()
    try:
        cfg = config.load(repo.work_tree() or repo.git_dir)
    except config.ConfigError as e:
        raise BadInput(TOOL, f"{e}\n(fix factory.yaml; nothing was merged)")
    try:
        result = mergequeue.merge_issue(repo, cfg, issue, actor=f"merge:{default_actor()}",
                                        log=lambda msg: say(TOOL, msg))
    except (NoSuchIssue, DamagedIssue, mergequeue.NotMergeable) as e:
        raise BadInput(TOOL, f"{e}; nothing was merged")
    except gate.GateError as e:
        raise Failed(TOOL, f"no verdict: {e}; nothing was merged", code=exits.GATE_ERROR)
    if as_json:
        emit(result)
    v = result["verdict"]
    if result["merged"]:
        say(TOOL, f"merged {result['issue']} into main: {result['commit'][:12]}")
        return 0
    if result["waiting"]:
        say(TOOL, f"{result['issue']} waits: {result['waiting']}")
    elif v:
        say(TOOL, f"{result['issue']} refused: {v['reason']}")
    return EXIT_NO


@cli.group(context_settings=CONTEXT_SETTINGS, epilog="""
\b
Exit codes: those of the verb (see factory image build --help); 2 for an unknown verb.

\b
Examples:
  factory image build
  factory image build --json | jq -r .image
""")
def image():
    """The image agents run in."""


@image.command("build", context_settings=CONTEXT_SETTINGS, epilog="""
\b
The recipe comes from factory.yaml's image section: its dockerfile if set, else the
repository's .devcontainer/devcontainer.json (build.dockerfile, or image as the base)
where it has one, else the base plus packages. Where a registry answers, the image is a
docker build; where none does (build: auto), the base is made offline with debootstrap
and docker import. The image is labelled factory.recipe=<hash> and tagged NAME:<hash12>
and NAME:latest; it is built again only when the recipe changes (or with --rebuild).
It holds bash, git and the toolchain, never an API key: the model loop runs on the host.

\b
Exit codes:
  0  the image exists (built now or before)
  1  the build failed, or no Docker engine answers
  2  bad input: an invalid factory.yaml or .devcontainer/devcontainer.json

\b
Examples:
  factory image build
  factory image build --rebuild --json
""")
@click.option("--rebuild", is_flag=True, help="Build even if an image for this recipe exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@repo_option
def image_build(rebuild, as_json):
    """Build the agent image for this repository (only when its recipe changed)."""
    import time
    from . import images, sandbox
    repo = _repo()
    top = repo.work_tree() or repo.git_dir
    cfg = _config(repo)
    try:
        recipe = images.recipe_from_config(cfg, top)
        digest = images.recipe_hash(recipe)
    except images.ImageError as e:
        raise BadInput(TOOL, str(e))
    started = time.monotonic()
    log = lambda msg: say(TOOL, msg)  # noqa: E731
    try:
        existed = sandbox.image_info(images.image_tag(recipe, digest)) is not None
        tag = images.rebuild(recipe, log=log) if rebuild else images.ensure_image(recipe, log=log)
    except (images.ImageError, sandbox.EngineUnavailable, sandbox.SandboxError) as e:
        raise Failed(TOOL, f"image build failed: {e}")
    result = {"image": tag, "recipe": digest, "source": recipe.source, "built": rebuild or not existed,
              "seconds": round(time.monotonic() - started, 2)}
    if as_json:
        emit(result)
    else:
        say(TOOL, f"{tag} ({'built' if result['built'] else 'up to date'}, recipe from {recipe.source})")


CRON_EXITS = """\b
Exit codes:
  0  done (also: nothing scheduled, nothing to change)
  1  the crontab could not be read or written (no crontab program, it refused), or it
     holds this repository's BEGIN marker without its END (or the other way round):
     nothing was changed
  2  usage or bad input: not a repository, an invalid factory.yaml, a path that a
     crontab line cannot carry (a newline, too long); nothing was changed"""


@cli.group("cron", invoke_without_command=True, context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Prints the crontab lines that run this repository's sensors and adversaries on the
schedules in factory.yaml (sensors.NAME.schedule, adversaries.NAME.schedule; null: by
hand only), as the block `factory cron install` writes into your crontab:

\b
  # BEGIN factory REPO
  SCHEDULE cd REPO && PATH=... [chronic] factory-slot KIND -- factory-sense NAME --file [>> LOG 2>&1]
  # END factory REPO

\b
REPO is the repository's absolute path, so each repository keeps a block of its own.
Every program is named by its absolute path. PATH (the tools' directory, where this
shell finds python3, git and docker, then /usr/local/bin:/usr/bin:/bin) is set on each
line, with FACTORY_CONFIG, FACTORY_STATE_DIR, FACTORY_SLOTS_DIR, FACTORY_RUNS_DIR,
FACTORY_CPUS, FACTORY_MEMORY, FACTORY_MODEL and FACTORY_DEBIAN_MIRROR where set, so cron
runs what this shell would. A line longer than cron reads (999 characters) is refused. The output is kept, never thrown away: under chronic where chronic
and a mailer are installed (cron mails a failed run's output), otherwise (or with --log)
appended to <state dir>/cron.log. ANTHROPIC_API_KEY is never written into a crontab.
With sense.scheduler: supervisor, factory start fires the schedules instead.
Nothing scheduled: nothing is printed, and stderr says so.
--json: one object per line: kind, name, schedule, next (its next due time, local), line.

{CRON_EXITS}

\b
Examples:
  factory cron
  factory cron --json | jq -r '.name + " " + .next'
  factory cron install
  factory cron uninstall
""")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per crontab line.")
@click.option("--log", "log_always", is_flag=True, help="Append the output to <state dir>/cron.log even "
                                                        "where chronic could mail it.")
@repo_option
@click.pass_context
def cron(ctx, as_json, log_always):
    """The crontab lines that run sensors and adversaries on their schedules."""
    if ctx.invoked_subcommand:
        if as_json:
            raise click.UsageError("--json is for printing the lines: factory cron --json")
        ctx.obj = {"log_always": log_always}  # factory cron --log install means install --log
        return
    from . import schedules
    plan = _cron_plan(log_always)
    if plan.cfg["sense"]["scheduler"] == "supervisor":
        say(TOOL, "note: factory.yaml says sense.scheduler: supervisor, so factory start fires these "
                  "schedules itself; do not install them too")
    if not plan.lines:
        say(TOOL, "nothing is scheduled: factory.yaml has no sensor or adversary with a schedule")
        return 0
    if as_json:
        from datetime import datetime
        now = datetime.now()
        for line in plan.lines:
            emit({"kind": line.kind, "name": line.name, "schedule": line.schedule,
                  "next": schedules.next_after(line.schedule, now).isoformat(), "line": line.text})
    else:
        click.echo(plan.block, nl=False)
    return 0


@cron.command("install", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Writes the block `factory cron` prints into your crontab (crontab -l, then crontab -):
replaces this repository's block where there is one, else adds it at the end. Every
other line stays byte for byte as it was, comments and variables (MAILTO=...) included,
and other repositories' blocks too. Running it again changes nothing; run it again after
changing a schedule in factory.yaml. Nothing scheduled: this repository's block is
removed. Refused, with nothing changed: a crontab holding this repository's BEGIN marker
without its END (fix it with crontab -e), and factory.yaml saying sense.scheduler:
supervisor (factory start fires the schedules then; cron too would run each twice).
Cron must be running for the lines to fire (./setup installs Debian's cron); a warning
says so where no cron daemon is seen. The crontab program: FACTORY_CRONTAB, default crontab.

{CRON_EXITS}

\b
Examples:
  factory cron install
  factory cron install --log && crontab -l
""")
@click.option("--log", "log_always", is_flag=True, help="Append the output to <state dir>/cron.log even "
                                                        "where chronic could mail it.")
@repo_option
@click.pass_context
def cron_install(ctx, log_always):
    """Install this repository's schedules in your crontab."""
    from . import cron as cron_, crontab
    plan = _cron_plan(log_always or (ctx.obj or {}).get("log_always", False))
    if plan.cfg["sense"]["scheduler"] == "supervisor":
        raise BadInput(TOOL, "factory.yaml says sense.scheduler: supervisor, so factory start fires the "
                             "schedules; in cron too, each would run twice. Nothing was changed (set "
                             "sense.scheduler: cron to use cron, or run factory cron uninstall)")
    begin, end = cron_.markers(plan.top)
    try:
        current = crontab.read()
        new = crontab.set_block(current, begin, end, plan.block)
        if plan.block and not plan.chronic:
            os.makedirs(os.path.dirname(plan.log), exist_ok=True)  # `>>` does not make its directory
        if new != current:
            crontab.write(new)
    except crontab.CrontabError as e:
        raise Failed(TOOL, str(e))
    if not plan.lines:
        say(TOOL, "nothing is scheduled: factory.yaml has no sensor or adversary with a schedule; "
                  + (f"removed the block for {plan.top} from your crontab" if new != current else
                     "your crontab has no block for this repository"))
        return 0
    if new == current:
        say(TOOL, f"your crontab is up to date: {len(plan.lines)} line(s) between '{begin}' and '{end}'")
    else:
        say(TOOL, f"installed {len(plan.lines)} line(s) in your crontab between '{begin}' and '{end}'")
    say(TOOL, f"their output: {'mailed by cron when a run fails (chronic)' if plan.chronic else plan.log}")
    if crontab.daemon_runs() is False:
        say(TOOL, "warning: no cron daemon seems to run here, so these lines will not fire until one does "
                  "(systemctl start cron), or use sense.scheduler: supervisor with factory start")
    return 0


@cron.command("uninstall", context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Removes this repository's block, from its BEGIN marker to its END marker, from your
crontab, and nothing else: every other line stays byte for byte as it was. Without a
block, nothing changes. factory.yaml is not read, so an invalid one does not stand in
the way. (A block left by a repository that is gone: crontab -e.)

{CRON_EXITS}

\b
Examples:
  factory cron uninstall
  factory cron uninstall -C ~/src/calc
""")
@repo_option
def cron_uninstall():
    """Remove this repository's schedules from your crontab."""
    from . import cron as cron_, crontab
    repo = _repo()
    top = _cron_top(repo)
    begin, end = cron_.markers(top)
    try:
        current = crontab.read()
        new = crontab.set_block(current, begin, end, None)
        if new == current:
            say(TOOL, f"your crontab has no block for {top}: nothing to remove")
            return 0
        crontab.write(new)
    except crontab.CrontabError as e:
        raise Failed(TOOL, str(e))
    say(TOOL, f"removed the block for {top} from your crontab")
    return 0


@dataclasses.dataclass
class _CronPlan:
    cfg: dict
    top: str                 # the repository, as its block names it
    lines: list              # cron.Line, one per schedule
    block: str | None        # None: nothing is scheduled
    log: str                 # where the output goes without chronic
    chronic: str | None


def _cron_top(repo) -> str:
    """The repository as its crontab block names it: the work tree's real path."""
    return os.path.realpath(repo.work_tree() or repo.git_dir)


def _cron_plan(log_always: bool) -> _CronPlan:
    """What `factory cron` prints and installs for the repository: its lines and block."""
    from . import cron as cron_, schedules
    from .env import kept_by_cron, state_dir
    repo = _repo()
    cfg = _config(repo)
    top = _cron_top(repo)
    beside = os.path.dirname(os.path.realpath(sys.argv[0] or ""))
    slot = tool_path("slot") or os.path.join(beside, "factory-slot")
    sense = tool_path("sense")
    if sense is None:
        sense = os.path.join(beside, "factory-sense")
        if schedules.scheduled(cfg):
            say(TOOL, f"warning: factory-sense is not installed yet; the lines name it as {sense}")
    path = cron_.run_path([os.path.dirname(slot), os.path.dirname(sense)])  # tools run tools by name
    log = os.path.join(os.path.abspath(state_dir(repo)), cron_.LOG_NAME)
    chronic = None if log_always else cron_.chronic_path()
    try:
        lines = cron_.lines(cfg, top, slot=slot, sense=sense, path=path, log=log, chronic=chronic,
                            keep=kept_by_cron())
        block = cron_.block(top, lines)
    except cron_.CronError as e:
        raise BadInput(TOOL, f"{e}; nothing was changed")
    return _CronPlan(cfg=cfg, top=top, lines=lines, block=block, log=log, chronic=chronic)


FINISHED = ("done", "closed", "failed")  # nothing left to approve


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
Records, in one change to the issue, the field approved = {by, at, head} and a comment
"approved by ACTOR at head COMMIT": head is the commit the issue's branch points at now,
or null before any work ("approved before any work"). An approval holds for that head
only: the gate checks it, so once the branch moves (new work), the approval no longer
counts. To re-approve, look again (factory review) and run factory approve again.
Who approves: env FACTORY_ACTOR, else human:$USER.
Output: the issue as it stands after, as one JSON object (as factory-issue prints it).

\b
Exit codes:
  0  approved
  1  the issue is done, closed or failed, or the branch it names does not exist;
     nothing was written
  2  usage or bad input (no such issue, a --note that is not text); nothing was written

\b
Examples:
  factory review
  factory approve 7f3a
  factory approve 7f3a --note "checked the migration by hand"
""")
@click.argument("issue_id", metavar="ID")
@click.option("--note", metavar="TEXT", help="Text to add to the approval's comment.")
@repo_option
def approve(issue_id, note):
    """Approve an issue's work as its branch stands now."""
    from . import contracts
    from .cmd_issue import _ordered
    from .gitstore import GitError, RefConflict, UnsafeArgument
    from .issues import DamagedIssue, IssueError, IssueStore, NoSuchIssue, default_actor, make_event
    repo = _repo()
    actor = default_actor()
    try:
        if note is not None:
            note = contracts.validate_comment(note)
    except contracts.ContractError as e:
        raise BadInput(TOOL, f"--note: {e}; nothing was written")

    def events(issue, last):
        if issue["state"] in FINISHED:
            raise IssueError(f"issue '{issue['id']}' is {issue['state']}: there is no work left to approve; "
                             "nothing was written")
        head = _branch_head(repo, issue)
        ev = make_event("set", actor, after=last, fields={})
        ev["fields"]["approved"] = contracts._field("approved", {"by": actor, "at": ev["at"], "head": head})
        text = f"approved by {actor} at head {head}" if head else f"approved by {actor} before any work"
        text = contracts.validate_comment(text + (f"\n\n{note}" if note else ""))  # a note near the limit
        return [ev, make_event("comment", actor, after=ev["at"], text=text)]

    store = IssueStore(repo, warn=lambda m: say(TOOL, m))
    try:
        issue = store.change(issue_id, events)
    except (NoSuchIssue, UnsafeArgument) as e:
        raise BadInput(TOOL, str(e))
    except contracts.ContractError as e:
        hint = {"approved.by": " (set FACTORY_ACTOR to a name such as human:ann)",
                "comment": " (shorten --note)"}.get(e.field, "")
        raise BadInput(TOOL, f"{e}{hint}; nothing was written")
    except (IssueError, DamagedIssue) as e:
        raise Failed(TOOL, str(e))
    except RefConflict as e:
        raise Failed(TOOL, f"gave up after repeated write conflicts ({e}); try again")
    except GitError as e:
        raise Failed(TOOL, str(e))
    emit(_ordered(issue))


def _branch_head(repo, issue) -> str | None:
    """The commit the issue's branch points at, None when it has no branch yet; IssueError
    when it names a branch that does not exist."""
    from .issues import IssueError
    if not issue.get("branch"):
        return None
    head = repo.resolve(f"refs/heads/{issue['branch']}")
    if head is None:
        raise IssueError(f"issue '{issue['id']}' names branch {issue['branch']}, which does not exist here; "
                         "restore it, or clear the issue's branch: echo '{\"id\": \"%s\", \"branch\": null}' "
                         "| factory-issue update" % issue["id"])
    return head


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
For each issue in review: its branch and head; the gate's verdict, if the gate has judged
that head (a verdict on an older head reads "not judged yet"); whether a person approved
that head (factory approve); and the diffstat of the branch against the default branch
(the repository's HEAD), from where the two meet (git merge-base).
--json: one object per issue, one per line: id, title, branch, head, base (the default
branch), merge_base, verdict (the gate's object or null), judged (the verdict is on this
head), approved (approved at this head), approval (the object or null), diffstat (text).

\b
Exit codes:
  0  listed (also when no issue is in review: it says so on stderr)
  2  not in a git repository

\b
Examples:
  factory review
  factory review --json | jq -r 'select(.judged and .verdict.verdict == "pass") | .id'
  factory review && factory approve 7f3a
""")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per issue, one per line.")
@repo_option
def review(as_json):
    """List the issues waiting in review: verdict, approval, changes."""
    from .issues import IssueStore
    from .spawn import default_ref
    repo = _repo()
    store = IssueStore(repo, warn=lambda m: say(TOOL, m))
    waiting = [i for i in store.all() if i["state"] == "review"]
    if not waiting:
        say(TOOL, "no issue is in review")
        return 0
    base_ref = default_ref(repo)
    rows = [_review_row(repo, i, base_ref) for i in waiting]
    if as_json:
        for row in rows:
            emit(row)
        return 0
    for row in rows:
        _print_review(row)
    click.echo("factory merge ID merges one; factory approve ID approves one at its head")
    return 0


def _review_row(repo, issue: dict, base_ref: str) -> dict:
    """What a person needs to judge one issue in review."""
    branch = issue.get("branch")
    head = repo.resolve(f"refs/heads/{branch}") if branch else None
    base = repo.resolve(base_ref)
    merge_base = repo.merge_base(base, head) if base and head else None
    verdict, approval = issue.get("verdict"), issue.get("approved")
    if head is None:
        diffstat = f"(no branch {branch} here)" if branch else "(no branch yet)"
    elif merge_base is None:
        diffstat = f"(no history in common with {base_ref})"
    else:
        diffstat = repo.diffstat(merge_base, head)
    return {
        "id": issue["id"], "title": issue["title"], "branch": branch, "head": head,
        "base": base_ref, "merge_base": merge_base, "verdict": verdict,
        "judged": bool(verdict and head and verdict.get("head") == head),
        "approved": bool(approval and approval.get("head") == head),
        "approval": approval, "diffstat": diffstat,
    }


def _print_review(r: dict) -> None:
    v, a = r["verdict"], r["approval"]
    if r["judged"]:
        verdict = f"{v['verdict']}: {v['summary']}" + ("  (needs a person's approval)" if v["needs_approval"] else "")
    elif v:
        verdict = f"not judged yet (the last verdict, {v['verdict']}, was on {str(v['head'])[:12]})"
    else:
        verdict = "not judged yet"
    if r["approved"]:
        approval = f"yes, by {a['by']} at {a['at']}"
    elif a:  # approved, but another head: what was approved is not what would merge
        what = f"head {a['head'][:12]}" if a["head"] else "it before any work"
        approval = f"no: {a['by']} approved {what}; to approve this head: factory approve {r['id']}"
    else:
        approval = "no"
    click.echo(f"{r['id']}  {r['title']}")
    click.echo(f"  branch    {r['branch'] or '-'}" + (f" at {r['head'][:12]}" if r["head"] else ""))
    click.echo(f"  verdict   {verdict}")
    click.echo(f"  approved  {approval}")
    click.echo(f"  changes   against {r['base'].removeprefix('refs/heads/')}")
    for line in r["diffstat"].rstrip("\n").splitlines() or ["(no changes)"]:
        click.echo(f"    {line}")
    click.echo("")


@cli.command(context_settings=CONTEXT_SETTINGS, epilog="""
\b
Is factory getting better? For people: the recorded failures (gate refusals and failed
runs in refs/factory/runs/) by root cause, per day; each lesson (on the default branch,
or pending on its factory/lesson-* branch) with its evidence and how often its root
cause came back before and after it landed; and the postmortems whose lessons have not
landed yet. Reads git only; changes nothing.

\b
--json: one object per lesson per line: lesson (its path), fingerprint, kind, title,
landed, branch (a pending change, or null), issue, postmortem, factual, check, evidence
(the failures it was learned from and that recurred: run, record, issue, head, base, at,
recurrence), recurrences_before, recurrences_after, failures (recorded failures with its
fingerprint). See docs/contracts.md.

\b
Exit codes:
  0  printed
  2  usage, or not in a git repository

\b
Examples:
  factory report
  factory report --json | jq 'select(.recurrences_after > 0) | .lesson'
""")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per lesson per line.")
@repo_option
def report(as_json):
    """Failures by root cause, lessons and their recurrences, open postmortems."""
    from . import report as report_
    from .issues import IssueStore
    from .spawn import default_ref
    repo = _repo()
    store = IssueStore(repo, warn=lambda m: say(TOOL, m))
    r = report_.build(repo, store, default_ref(repo))
    if as_json:
        for lesson in r["lessons"]:
            emit(lesson)
    else:
        click.echo(report_.text(r))
    return 0


def _slot_status(repo, cfg) -> dict:
    from .slots import SlotError, Slots
    from .env import slots_dir
    root = slots_dir(repo)
    try:
        st = Slots(root, cfg).status()
    except SlotError as e:  # FACTORY_CPUS / FACTORY_MEMORY
        raise BadInput(TOOL, str(e))
    return {"total": st["total"]["size"], "used": st["total"]["used"],
            "kinds": {k: {"size": v["size"], "used": v["used"]} for k, v in st["kinds"].items()}}


def _sensing(repo, store, issues, cfg) -> dict:
    """Sensors and adversaries: who holds a slot now (factory-sense NAME), and each
    source's precision, muted or not (sense.py)."""
    from . import sense
    from .env import slots_dir
    from .slots import SlotError, Slots
    try:
        leases = Slots(slots_dir(repo), cfg).leases()
    except SlotError:
        leases = []
    import time
    at_work = [{"kind": lease.kind, "slot": f"{lease.kind}.{lease.slot}", "command": lease.command,
                "age_s": round(time.time() - lease.since, 1)}
               for lease in leases if lease.kind in ("sensor", "adversary")]
    sources = {}
    for src, row in sorted(sense.precision(repo, store, issues).items()):
        sources[src] = dict(row, muted=sense.muted(row, cfg["sense"]["min_precision"]))
    return {"at_work": at_work, "sources": sources}


def _agents(repo) -> list[dict]:
    """Agents running on this host: issue, run, age, progress so far."""
    import time
    from .workspace import live_owners
    return [{"issue": o.get("issue"), "run": o["run"], "pid": o["pid"],
             "age_s": round(time.time() - o.get("created", time.time()), 1),
             "turns": (o.get("progress") or {}).get("turns", 0),
             "tokens": (o.get("progress") or {}).get("tokens", 0)} for o in live_owners(repo)]


def _print_status(r: dict) -> None:
    cfg = r["config"]
    cfg_line = f"{os.path.relpath(cfg['path'], r['repo'])} " + (
        "(valid)" if cfg["ok"] else "(INVALID)") if cfg["exists"] else "none (defaults; run: factory init)"
    eng = r["engine"]
    eng_line = (f"docker {eng['version']} ({eng['storage_driver']}, cgroup v{eng['cgroup']})" if eng["ok"]
                else f"DOWN: {eng['error']}")
    s = r["slots"]
    k = s["kinds"]
    iss = r["issues"]
    sup = r["supervisor"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(iss["by_state"].items())) or "none"
    click.echo(f"repo     {r['repo']}")
    click.echo(f"config   {cfg_line}")
    for problem in cfg.get("errors", []):
        click.echo(f"         {problem}")
    click.echo(f"engine   {eng_line}")
    click.echo(f"kernel   {'running (pid %s)' % sup['pid'] if sup['running'] else 'not running (factory start)'}"
               + (f"; waiting: {sup['waiting']}" if sup.get("waiting") else ""))
    click.echo(f"slots    {s['used']}/{s['total']}: "
               + ", ".join(f"{kind} {v['used']}/{v['size']}" for kind, v in k.items()))
    click.echo(f"issues   {iss['total']} total, {iss['ready']} ready: {states}"
               + (f"; {iss['damaged']} damaged refs skipped (see above)" if iss.get("damaged") else ""))
    for kind, why in r["never_fit"].items():
        click.echo(f"blocked  {kind}: {why}")
    for w in r["sensing"]["at_work"]:
        click.echo(f"{w['kind']:<9}{w['command'] or '-'}  (slot {w['slot']}, {w['age_s']:.0f}s)")
    for src, row in r["sensing"]["sources"].items():
        prec = "-" if row["precision"] is None else f"{row['precision']:.2f}"
        click.echo(f"source   {src}: precision {prec} ({row['filed']} filed, {row['not_useful']} not useful, "
                   f"{row['dropped']} dropped unconfirmed)" + (f"; {row['muted']}" if row["muted"] else ""))
    for a in r["agents"]:
        click.echo(f"agent    {a['issue'] or '-'}  run {a['run']}  {a['age_s']:.0f}s  "
                   f"turns {a['turns']}  tokens {a['tokens']}")


def main() -> int:
    args = sys.argv[1:]
    if args and not args[0].startswith("-") and args[0] not in BUILTINS:
        path = tool_path(args[0])
        if path is None:
            say(TOOL, f"'{args[0]}' is not a factory command (try: factory --help)")
            return 127
        try:
            os.execv(path, [f"factory-{args[0]}"] + args[1:])
        except OSError as e:
            say(TOOL, f"cannot run {path}: {e}")
            return 126
    return run_main(cli, TOOL)


if __name__ == "__main__":
    sys.exit(main())
