"""The supervisor (`factory start`): keep the slots busy by running the tools as children.

It holds no state of its own. Each agent is two children: `factory-issue next --claim`
takes the next ready issue, then `factory-slot KIND -- factory-spawn` runs it with the
issue on stdin. Everything it knows it rebuilds on start: from git (issues), the slot
locks and the live workspaces; an issue claimed by a supervisor whose agent is gone is
re-queued once, without counting an attempt.

Before each claim it reads factory.yaml again and asks slots.py whether the kind's
request can ever fit this machine: an invalid config or a request that never fits claims
nothing, and it waits (saying why) until factory.yaml changes. It judges each spawn by the
run JSON it printed, else by the named exit codes of exits.py, never by a bare number: an
issue is never charged, failed or blamed for the factory's own trouble (a slot refused, an
invalid config, an engine gone). A flock makes it the only supervisor of
a repository. It sleeps in select() on a pipe that signals and child exits write to,
waking every few seconds to look for new issues: idle, it costs next to nothing.

Runtime files (see env.py), under $FACTORY_STATE_DIR (default <common git dir>/factory/),
but for the lock, always on the common git dir, so that neither a linked worktree nor
another state directory can start a second supervisor on the same repository:
    supervisor.lock   flock held while a supervisor runs; holds its pid
    supervisor.log    its output under --detach
    supervisor.json   its pid and what it waits for, if anything (read by `factory status`)
    logs/<issue>.log  each agent's stderr;  logs/<issue>.run.json  its run JSON

Beside the workers run two more pipelines, each in slots of its own kind:
    gate        an issue in review whose branch head has no verdict: `factory-slot gate --
                factory-gate ID` (merge: manual), or, with merge: auto, the merge queue,
                one at a time: `factory-slot gate -- factory merge --json ID`, which judges
                the branch on main as it is and lands exactly that tree. While main is
                checked out with a dirty work tree, merges wait and the status says why.
    postmortem  each failed run (not the factory's trouble) and each refusal:
                `factory-slot postmortem -- factory-postmortem --failed-only`, the run
                JSON or verdict on stdin. (Queued in memory: what a stop drops stays in
                the run records, and `factory-postmortem` can be fed them by hand.)
    sense       with sense.scheduler: supervisor (a machine without cron), each sensor
                and adversary whose schedule comes due: `factory-slot sensor|adversary
                -- factory-sense -q NAME --file`, output in logs/sense-NAME.log; one run
                per name at a time (a due time that comes while the last run goes on is
                skipped). schedules.Timetable says what is due, in memory, from the
                start: like cron, nothing due before the start fires, and after a gap
                only the latest missed due time fires, once. --until-idle does not wait
                for a schedule, only for runs already started.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from datetime import datetime, timezone

from . import env, exits
from .gitstore import Repo
from .issues import IssueStore

from .registry import SLOT_KINDS
POLL_S = 2.0            # how often an idle supervisor looks for new issues
STOP_GRACE_S = 600      # a graceful stop waits this long for running agents
HOLD_S, HOLD_MAX_S = 1.0, 60.0  # after unexplained endings in a row: pause claims, doubling
EXIT_ALREADY_RUNNING = exits.START_ALREADY_RUNNING
EXIT_CANNOT_FIT = exits.START_CANNOT_FIT


def _signature(path: str) -> tuple | None:
    """What changes whenever a file is written or replaced (None: there is none)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


class AlreadyRunning(Exception):
    pass


@dataclass
class Agent:
    """One child pipeline: `claim` first, then `spawn`; or a `gate`, a `postmortem`, or a
    scheduled `sense` run of the sensor or adversary `name`."""
    kind: str
    proc: subprocess.Popen
    phase: str = "claim"
    issue: dict | None = None
    pidfd: int | None = None
    name: str | None = None

    def __post_init__(self):
        self.pidfd = os.pidfd_open(self.proc.pid)  # readable once the child exits

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Supervisor:
    def __init__(self, repo: Repo, cfg: dict, *, out=sys.stdout, until_idle: bool = False,
                 bin_dir: str | None = None):
        self.repo = repo
        self.cfg = cfg
        self.store = IssueStore(repo)
        self.out = out
        self.until_idle = until_idle
        self.state = env.state_dir(repo)
        self.logs = os.path.join(self.state, "logs")
        self.agents: list[Agent] = []
        self.stopping: str | None = None      # None, "graceful" or "now"
        self.stop_deadline = None
        self.actor = f"supervisor:{os.getpid()}"
        self.last_line = None
        self.tool = (lambda name: os.path.join(bin_dir, name)) if bin_dir else (lambda name: name)
        self.lock_fd = None
        self.queue_seen = None      # the issue refs' mtimes when the queue was last read
        self.recheck_at = 0.0       # when a not_before passes, the queue must be read again
        self.work_waiting = True    # the last read found ready work (a slot may have freed)
        self.engine_down = False    # a run failed because the Docker engine went away
        from . import config
        self.config_path = config.path_for(repo.work_tree() or repo.git_dir)
        self.waiting: str | None = None   # why no work starts: factory.yaml invalid, a request never fits
        self.waiting_sig = None           # factory.yaml as it was then: only a change can end the wait
        self.gave_up: str | None = None   # --until-idle: ready work can never run here
        self.status_written = None
        self.unexplained = 0              # spawns in a row that ended with no run (not by our stop)
        self.hold_until = 0.0             # no claim before this (monotonic): never a tight loop
        self.postmortems: list[dict] = []  # failed runs and refusals waiting for factory-postmortem
        self.gate_held: dict[str, tuple] = {}  # issue -> (head, until): a gate that reached no verdict
        self.merge_waits: str | None = None    # merge: auto, and main's work tree is not clean
        self.gate_seen, self.gate_recheck_at, self.gate_cached = None, 0.0, []
        self.timetable = None             # sense.scheduler: supervisor: what is due when
        self.sense_seen = ()              # factory.yaml as the timetable last read it
        self.sense_cfg_ok = True

    # -- the only supervisor ---------------------------------------------------------

    def lock(self) -> None:
        os.makedirs(self.logs, exist_ok=True)
        # On the common git dir, whatever the worktree or FACTORY_STATE_DIR: one per repository.
        path = env.supervisor_lock(self.repo)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = os.pread(fd, 32, 0).decode().strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"a supervisor already runs on this repository (pid {pid}); "
                                 "stop it with `factory stop`, or look at `factory status`")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    # -- start: rebuild the picture --------------------------------------------------

    def reconcile(self) -> list[str]:
        """Remove what dead agents left and re-queue their issues, once, uncounted."""
        from . import sandbox, workspace
        try:
            sandbox.reap(filters={"factory.repo": self.repo.common_dir})
        except sandbox.EngineUnavailable as e:
            self.say(f"warning: {e}")
        workspace.reap(self.repo)
        requeued = self.store.requeue_dead_claims(self.actor)
        if requeued:
            self.say(f"re-queued {len(requeued)} issue(s) whose agent was gone: {', '.join(requeued)}")
        return requeued

    # -- the loop --------------------------------------------------------------------

    def run(self) -> int:
        self.lock()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)  # drained until empty after each wake-up
        os.set_blocking(wake_w, False)  # a signal handler must never block on it
        signal.set_wakeup_fd(wake_w)  # only the stop signals below: children wake us by pidfd
        signal.signal(signal.SIGTERM, lambda *a: self.stop("graceful"))
        signal.signal(signal.SIGINT, lambda *a: self.stop("now" if self.stopping else "graceful"))
        signal.signal(signal.SIGUSR1, lambda *a: self.stop("now"))
        self.reconcile()
        self.render()
        while True:
            self.collect()
            if self.stopping:
                if not self.agents:
                    break
                if self.stopping == "graceful" and time.monotonic() > self.stop_deadline:
                    self.stop("now")
            else:
                self.fill()
                self.fill_gates()
                self.fill_postmortems()
                self.fill_sense()
                if self.until_idle and not self.agents and (not self.work_waiting or self.gave_up) \
                        and not self.postmortems and (self.merge_waits or not self.gate_candidates()):
                    break
            self.render()
            try:
                fds = [wake_r] + [a.pidfd for a in self.agents]
                ready, _, _ = select.select(fds, [], [], self.sleep_for())
                while wake_r in ready and os.read(wake_r, 4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
        self.stopping = self.stopping or "idle"
        self.render()
        if self.gave_up:
            self.say(f"giving up (--until-idle): {self.gave_up}")
            return EXIT_CANNOT_FIT
        return exits.OK

    def sleep_for(self) -> float:
        """POLL_S, or less where a schedule comes due sooner. A due time already past is
        one that cannot fire yet (the engine is down, factory.yaml invalid): no hurry."""
        due = self.timetable.next_due() if self.timetable else None
        left = (due - datetime.now()).total_seconds() if due else POLL_S
        return min(POLL_S, left) if left > 0 else POLL_S

    def stop(self, how: str) -> None:
        if how == "now":
            for a in self.agents:
                try:
                    # the spawn alone, not its group: its own git children must finish recording
                    os.kill(a.proc.pid, signal.SIGTERM)  # it records the run, re-queues uncounted
                except ProcessLookupError:
                    pass
        if self.stopping != "now":
            self.stopping = how
            self.stop_deadline = time.monotonic() + STOP_GRACE_S

    def running(self, kind: str) -> int:
        """Agents of a kind running now: slot leases held (ours and any a previous
        supervisor left running) or our own spawns not yet holding one, plus our claims."""
        held = sum(1 for lease in self._slots().leases() if lease.kind == kind)
        spawns = sum(1 for a in self.agents if a.kind == kind and a.phase == "spawn")
        claims = sum(1 for a in self.agents if a.kind == kind and a.phase == "claim")
        return max(held, spawns) + claims

    def _slots(self):
        from .slots import Slots
        root = env.slots_dir(self.repo)
        return Slots(root, self.cfg)

    def fill(self) -> None:
        """Start claims while the worker quota has room and issues are ready."""
        if any(a.phase == "claim" for a in self.agents):
            return  # one claim at a time: each learns from the one before whether work is left
        if self.waiting and _signature(self.config_path) == self.waiting_sig:
            return  # only a change to factory.yaml can end this wait
        if time.monotonic() < self.hold_until:
            return
        quota = self.cfg["slots"]["worker"]
        if quota and self.running("worker") >= quota:
            return  # (a quota of 0 goes on, to be reported as work that can never run)
        from . import sandbox
        if self.engine_down:
            if not sandbox.engine_info()["ok"]:
                return  # no point starting agents that cannot get a container; look again soon
            self.engine_down = False
            self.say("the Docker engine answers again; going on")
        if not self._queue_may_have_changed():
            return
        ready = self.ready("worker")
        self.work_waiting = bool(ready)
        if not ready or not self.may_start("worker"):
            return
        if not sandbox.engine_info()["ok"]:
            # Before a run's spawn has exited, and so before it tells us the engine cut it,
            # it has put its issue back: do not hand that to a spawn that cannot run it.
            self.engine_is_down()
            return
        proc = subprocess.Popen([self.tool("factory-issue"), "next", "--claim", "--kind", "worker", "--by", self.actor],
                                cwd=self.repo.cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.agents.append(Agent(kind="worker", proc=proc))

    def may_start(self, kind: str) -> bool:
        """Whether an agent of `kind` may be started now: factory.yaml, read again (it may
        have changed since the last start), is valid, and slots.py says the kind's request
        can ever fit this machine (what factory-slot would refuse with SLOT_CANNOT_FIT).
        Checked before the claim, so that no issue is claimed only to be handed back."""
        from . import config
        from .slots import NoFit, SlotError, check_fit
        sig = _signature(self.config_path)
        try:
            cfg = config.load(self.repo.work_tree() or self.repo.git_dir)
            check_fit(cfg, kind)
        except config.ConfigError as e:
            more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
            self.wait_for(e.problems[0] + more, sig)
            return False
        except SlotError as e:
            self.wait_for(str(e), sig)
            if isinstance(e, NoFit) and self.until_idle:
                self.gave_up = str(e)
            return False
        self.cfg = cfg
        self.gave_up = None
        self.wait_for(None, None)
        return True

    def wait_for(self, why: str | None, sig) -> None:
        if why != self.waiting:
            self.say(f"waiting: {why}; no issue is claimed until factory.yaml changes" if why
                     else "factory.yaml is fine again; going on")
        self.waiting, self.waiting_sig = why, sig

    def _queue_may_have_changed(self) -> bool:
        seen = tuple(_mtime(os.path.join(self.repo.common_dir, p)) for p in ("refs/factory/issues", "packed-refs"))
        if seen != self.queue_seen or self.work_waiting or time.time() >= self.recheck_at:
            self.queue_seen = seen
            self.recheck_at = time.time() + 60  # a backstop; not_before times bring it nearer
            return True
        return False

    def ready(self, kind: str) -> list[dict]:
        issues = self.store.all()
        waits = [i["not_before"] for i in issues if i["state"] == "open" and i.get("not_before")]
        if waits:
            soonest = datetime.strptime(min(waits), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
            if soonest > time.time():
                self.recheck_at = min(self.recheck_at, soonest)
        return [i for i in self.store.ready(issues) if i["kind"] == kind]

    def collect(self) -> None:
        """Move each child on: a finished claim starts its spawn; a finished spawn is settled."""
        for a in list(self.agents):
            if a.proc.poll() is None:
                continue
            a.close()
            self.agents.remove(a)
            if a.phase == "claim":
                out = a.proc.stdout.read().decode()
                a.proc.stdout.close()
                if a.proc.returncode == 0 and out.strip():
                    self.start_spawn(json.loads(out.splitlines()[0]))
                    self.fill()
            elif a.phase == "gate":
                self.settle_gate(a)
            elif a.phase == "postmortem":
                self.say(f"postmortem of {a.issue['id']} ended: exit {a.proc.returncode}"
                         + (f" (see {self.logs}/{a.issue['id']}.postmortem.log)" if a.proc.returncode else ""))
            elif a.phase == "sense":
                self.say(f"{a.kind} {a.name} ended: exit {a.proc.returncode}"
                         + (f" (see {self.logs}/sense-{a.name}.log)" if a.proc.returncode else ""))
            else:
                self.settle(a)

    def start_spawn(self, issue: dict) -> None:
        log = open(os.path.join(self.logs, f"{issue['id']}.log"), "ab")
        result = open(os.path.join(self.logs, f"{issue['id']}.run.json"), "wb")
        proc = subprocess.Popen([self.tool("factory-slot"), "-q", "worker", "--", self.tool("factory-spawn"), "-q"],
                                cwd=self.repo.cwd, stdin=subprocess.PIPE, stdout=result, stderr=log,
                                start_new_session=True)
        log.close()
        result.close()
        proc.stdin.write(json.dumps(issue).encode() + b"\n")
        proc.stdin.close()
        self.agents.append(Agent(kind="worker", proc=proc, phase="spawn", issue=issue))
        self.say(f"worker started on {issue['id']}: {issue['title'][:60]}")

    def settle(self, a: Agent) -> None:
        """After a spawn: judge it by the run JSON it printed, else by the named exit code
        of whichever step refused (exits.py). Only a task factory-spawn refused is failed;
        whatever else ended without settling the issue hands it back, uncounted."""
        code = a.proc.returncode
        issue_id = a.issue["id"]
        run = {}
        try:
            with open(os.path.join(self.logs, f"{issue_id}.run.json")) as f:
                run = json.loads(f.read() or "{}")
        except (OSError, ValueError):
            pass
        if run:
            self.unexplained = 0
            self.say(f"worker on {issue_id} ended: {run.get('status')}"
                     + (f" ({run['reason'][:80]})" if run.get("reason") and run.get("status") != "ok" else ""))
            if run.get("infra"):
                # Its issue is open again: not idle (--until-idle) until that has run.
                self.work_waiting = True
                self.engine_is_down()
            if run.get("status") != "ok" and not run.get("infra") and run.get("landed"):
                self.postmortems.append(run)  # a failure of the work: it becomes a lesson
            if run.get("landed") is not None:
                return  # factory-spawn settled the issue under its claim (review, or re-queued)
            why = "its run did not settle it"
        elif code == exits.SPAWN_BAD_TASK:  # factory-slot never exits 2 itself: this is the task's
            self.say(f"worker on {issue_id} ended: factory-spawn refused the task")
            self.store.close(issue_id, self.actor, reason="factory-spawn refused this issue as a task "
                             f"(see {self.logs}/{issue_id}.log)", state="failed")
            return
        elif code == exits.SPAWN_NOT_RUN:
            self.say(f"worker on {issue_id} not run: someone else holds the issue")
            return
        elif code in (exits.SLOT_CONFIG, exits.SPAWN_CONFIG):
            why = "factory.yaml was invalid when the agent started"
        elif code == exits.SLOT_CANNOT_FIT:
            why = "factory-slot found that a worker's request can never fit this machine"
        elif code in exits.SLOT_OWN:
            why = f"factory-slot refused (exit {code}; see {self.logs}/{issue_id}.log)"
        else:
            why = (f"killed by signal {-code}" if code < 0 else f"exit {code}") + " before it printed a run"
        self.say(f"worker on {issue_id} ended: {why}; handing the issue back, uncounted")
        if not self.stopping and not run.get("infra"):
            # Whatever it was may happen again at once (a crash, a tool not installed, a
            # check that disagrees with factory-slot's): a pause, doubling, keeps an issue
            # from being claimed and handed back in a tight loop. (The engine has its own wait.)
            self.unexplained += 1
            pause = min(HOLD_MAX_S, HOLD_S * 2 ** (self.unexplained - 1))
            self.hold_until = time.monotonic() + pause
            self.say(f"{self.unexplained} agent(s) in a row ended that way; no claim for {pause:g} s")
        # Unless another of our agents has the issue by now, put it back, uncounted.
        current = self.store.get(issue_id)
        ours_on_it = any(x.issue and x.issue["id"] == issue_id for x in self.agents)
        if current["state"] == "claimed" and current.get("claimed_by") == self.actor and not ours_on_it:
            self.store.update(issue_id, {"state": "open", "claimed_by": None}, self.actor)

    # -- the gate and the merge queue ------------------------------------------------

    def gate_candidates(self) -> list[dict]:
        """Issues in review that the gate should look at now. merge: manual, those whose
        branch head has no verdict yet (or was approved since it waited for approval);
        merge: auto, also those that passed: the merge queue judges them again on the
        main they land on."""
        if not self.cfg["slots"]["gate"] or self.engine_down:
            return []
        auto = self.cfg["merge"] == "auto"
        # Read again only when an issue or a branch moved, or a held gate's pause ended:
        # idle, the supervisor starts no process.
        seen = (auto, tuple(_mtime(os.path.join(self.repo.common_dir, p)) for p in
                            ("refs/factory/issues", "refs/heads", "refs/heads/factory", "packed-refs")))
        if seen == self.gate_seen and time.monotonic() < self.gate_recheck_at:
            return self.gate_cached
        self.gate_seen, self.gate_recheck_at = seen, time.monotonic() + 60
        from .gate import default_ref, is_lesson
        main = self.repo.resolve(default_ref(self.repo))
        out = []
        for issue in self.store.all():
            if issue["state"] != "review" or not issue.get("branch"):
                continue
            head = self.repo.resolve("refs/heads/" + issue["branch"])
            held = self.gate_held.get(issue["id"])
            if head is None or (held and held[0] == head and time.monotonic() < held[1]):
                if held:
                    self.gate_recheck_at = min(self.gate_recheck_at, held[1])
                continue
            v = issue.get("verdict") or {}
            approved = (issue.get("approved") or {}).get("head") in (head, None) and issue.get("approved")
            judged = v.get("head") == head and not (v.get("needs_approval") and approved)
            if judged and v.get("verdict") == "refuse" and is_lesson(issue):
                judged = v.get("base") == main  # a refused lesson waits for main to move

            if not judged or (auto and v.get("verdict") == "pass"):
                out.append(issue)
        self.gate_cached = out
        return out

    def fill_gates(self) -> None:
        """One gate at a time per slot; with merge: auto, one merge at a time (the queue)."""
        running = [a for a in self.agents if a.phase == "gate"]
        auto = self.cfg["merge"] == "auto"
        if len(running) >= self.cfg["slots"]["gate"] or (auto and running):
            return
        candidates = self.gate_candidates()
        if not candidates:
            self.merge_waits = None
            return
        if auto:
            from .gate import default_ref
            busy = self.repo.worktree_busy(default_ref(self.repo))
            if busy != self.merge_waits:
                self.say(f"merge waits: {busy}" if busy else "main's work tree is clean again; merging")
                self.merge_waits = busy
            if busy:
                return
        busy_ids = {a.issue["id"] for a in running}
        for issue in candidates:
            if issue["id"] in busy_ids:
                continue
            self.start_gate(issue, merge=auto)
            return

    def start_gate(self, issue: dict, merge: bool) -> None:
        iid = issue["id"]
        log = open(os.path.join(self.logs, f"{iid}.gate.log"), "ab")
        result = open(os.path.join(self.logs, f"{iid}.verdict.json"), "wb")
        cmd = [self.tool("factory"), "merge", "--json", iid] if merge else [self.tool("factory-gate"), "-q", iid]
        proc = subprocess.Popen([self.tool("factory-slot"), "-q", "gate", "--", *cmd], cwd=self.repo.cwd,
                                stdin=subprocess.DEVNULL, stdout=result, stderr=log, start_new_session=True)
        log.close()
        result.close()
        head = self.repo.resolve("refs/heads/" + issue["branch"])
        self.agents.append(Agent(kind="gate", proc=proc, phase="gate", issue={**issue, "head": head}))
        self.say(("merge queue" if merge else "gate") + f" started on {iid}: {issue['title'][:60]}")

    def settle_gate(self, a: Agent) -> None:
        """Read what the gate (or the merge) printed: refusals go to factory-postmortem."""
        iid = a.issue["id"]
        verdicts = []
        try:
            with open(os.path.join(self.logs, f"{iid}.verdict.json")) as f:
                for line in f:
                    obj = json.loads(line) if line.strip() else None
                    if isinstance(obj, dict):
                        verdicts.append(obj.get("verdict") if isinstance(obj.get("verdict"), dict) else obj)
                        if obj.get("waiting"):
                            self.say(f"merge of {iid} waits: {obj['waiting']}")
                        if obj.get("merged"):
                            self.say(f"merged {iid} into main at {str(obj.get('commit'))[:12]}")
        except (OSError, ValueError):
            pass
        verdicts = [v for v in verdicts if isinstance(v, dict) and v.get("verdict")]
        for v in verdicts:
            self.say(f"gate on {iid}: {v['verdict']}" + (f" ({v.get('reason', '')[:80]})" if v["verdict"] != "pass" else ""))
            if v["verdict"] == "refuse" and not v.get("needs_approval") and v.get("settled"):
                self.postmortems.append(v)
        if not verdicts and a.proc.returncode != 0:
            # No verdict (the engine, the image, main's config): not the branch's fault.
            # Do not judge the same head again for a while.
            self.gate_held[iid] = (a.issue.get("head"), time.monotonic() + 60)
            self.say(f"gate on {iid} reached no verdict (exit {a.proc.returncode}; see {self.logs}/{iid}.gate.log); "
                     "trying again in 60 s")

    # -- postmortems -----------------------------------------------------------------

    def fill_postmortems(self) -> None:
        quota = self.cfg["slots"]["postmortem"]
        if not quota:
            self.postmortems.clear()  # postmortems are switched off (slots.postmortem: 0)
            return
        while self.postmortems and sum(1 for a in self.agents if a.phase == "postmortem") < quota:
            failure = self.postmortems.pop(0)
            iid = failure.get("issue") or "run"
            log = open(os.path.join(self.logs, f"{iid}.postmortem.log"), "ab")
            proc = subprocess.Popen([self.tool("factory-slot"), "-q", "postmortem", "--",
                                     self.tool("factory-postmortem"), "-q", "--failed-only"],
                                    cwd=self.repo.cwd, stdin=subprocess.PIPE, stdout=log, stderr=log,
                                    start_new_session=True)
            log.close()
            proc.stdin.write(json.dumps(failure).encode() + b"\n")
            proc.stdin.close()
            self.agents.append(Agent(kind="postmortem", proc=proc, phase="postmortem", issue={"id": iid}))
            self.say(f"postmortem started on {iid}")

    # -- sensors and adversaries on their schedules ------------------------------------

    def fill_sense(self, now: datetime | None = None) -> None:
        """sense.scheduler: supervisor: start each sensor and adversary whose schedule has
        come due (`now`: the local wall clock, as cron reads it). Nothing due, nothing
        starts: this reads no more than factory.yaml's stat and the times in memory."""
        now = now or datetime.now()
        if not self._read_timetable(now) or self.engine_down:
            return  # what comes due meanwhile fires once, when it can run again
        for kind, name in self.timetable.due_now(now):
            if any(a.phase == "sense" and a.name == name for a in self.agents):
                self.say(f"{kind} {name} is due, but its last run goes on; skipped this time")
                continue
            self.start_sense(kind, name)

    def _read_timetable(self, now: datetime) -> bool:
        """Whether schedules are the supervisor's to fire; the timetable follows factory.yaml
        as it changes. While factory.yaml is invalid nothing fires (every run would refuse
        it); once it is fixed, what was missed meanwhile fires once."""
        from . import config, schedules
        seen = _signature(self.config_path)
        if seen != self.sense_seen:
            self.sense_seen = seen
            try:
                cfg = config.load(self.repo.work_tree() or self.repo.git_dir)
            except config.ConfigError:
                self.sense_cfg_ok = False  # fill() says why, for the workers too
                return False
            self.sense_cfg_ok = True
            if cfg["sense"]["scheduler"] != "supervisor":
                self.timetable = None
            elif self.timetable is None:
                self.timetable = schedules.Timetable(cfg, now)
            else:
                self.timetable.update(cfg, now)
        return self.timetable is not None and self.sense_cfg_ok

    def start_sense(self, kind: str, name: str) -> None:
        log = open(os.path.join(self.logs, f"sense-{name}.log"), "ab")
        try:
            proc = subprocess.Popen([self.tool("factory-slot"), "-q", kind, "--", self.tool("factory-sense"), "-q",
                                     name, "--file"], cwd=self.repo.cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True)
        except OSError as e:
            self.say(f"cannot start {kind} {name}: {e}")
            return
        finally:
            log.close()
        self.agents.append(Agent(kind=kind, proc=proc, phase="sense", name=name))
        self.say(f"{kind} {name} started: its schedule came due")

    def engine_is_down(self) -> None:
        if not self.engine_down:
            self.engine_down = True
            self.say("the Docker engine is not answering; waiting for it before starting more agents")

    # -- output ----------------------------------------------------------------------

    def counts(self) -> dict:
        leases = self._slots().leases()
        return {k: sum(1 for lease in leases if lease.kind == k) for k in SLOT_KINDS}

    def render(self) -> None:
        c = self.counts()
        used, total = sum(c.values()), self.cfg["slots"]["total"]
        kernel = {None: "running", "graceful": "stopping", "now": "stopping now", "idle": "stopped"}[self.stopping]
        if self.engine_down and not self.stopping:
            kernel = "waiting for docker"
        elif self.waiting and not self.stopping:
            kernel = "waiting: " + self.waiting
        elif self.merge_waits and not self.stopping:
            kernel = "merge waits: " + self.merge_waits
        self.write_status(kernel)
        first = f"spawning agents  slots: {used}/{total}"
        second = (f"workers:{c['worker']}  sensors:{c['sensor']}  adversaries:{c['adversary']}  "
                  f"gates:{c['gate']}  postmortems:{c['postmortem']}  kernel:{kernel}")
        tty = self.out.isatty()
        if tty:  # a wrapped line would break the two-line redraw
            import shutil
            second = second[:shutil.get_terminal_size().columns - 1]
        if (first, second) == self.last_line:
            return
        if tty and self.last_line is not None:
            self.out.write("\x1b[2F\x1b[J")  # up two lines, clear: a live status
        self.out.write(f"{first}\n{second}\n" if tty else f"{first}  {second}\n")
        self.out.flush()
        self.last_line = (first, second)

    def write_status(self, kernel: str) -> None:
        """For `factory status`, which runs in another process: what this one waits for."""
        waiting = self.waiting or (f"merge waits: {self.merge_waits}" if self.merge_waits else None)
        status = {"v": 1, "pid": os.getpid(), "kernel": kernel, "waiting": waiting}
        if status == self.status_written:
            return
        from . import atomic
        try:
            atomic.write_text(env.supervisor_status(self.repo), json.dumps(status) + "\n")
            self.status_written = status
        except OSError as e:
            self.say(f"warning: cannot write {env.supervisor_status(self.repo)}: {e}")

    def say(self, msg: str) -> None:
        print(f"factory: {msg}", file=sys.stderr, flush=True)
