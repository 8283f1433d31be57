"""factory start: keeps the worker slots full from the queue, never over quota, and
survives being killed: every issue ends done or re-queued exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
from conftest import BIN, run_tool
from modelserver import ScriptedModel, delay, text, tool_use
from privateengine import PrivateEngine
from spawnkit import file_issue, git, sample_repo, spawn_env

pytestmark = pytest.mark.docker

ANSWER_DELAY_S = 1.5
WORKERS_ONLY = "slots:\n  worker: {n}\n  gate: 0\n  postmortem: 0\nbudgets:\n  retry_backoff_seconds: 0\n"


def responder(body):
    """A stateless agent: create a file named after its issue, then say done."""
    last = body["messages"][-1]["content"]
    if any(b.get("type") == "tool_result" for b in last):
        return delay(ANSWER_DELAY_S, text("done"))
    issue_id = re.search(r'"id": "([0-9a-f]{12})"', body["messages"][0]["content"][0]["text"]).group(1)
    return delay(ANSWER_DELAY_S, tool_use("str_replace_based_edit_tool", {
        "command": "create", "path": f"/workspace/repo/{issue_id}.txt", "file_text": issue_id}))


@pytest.fixture
def repo(tmp_path):
    r = sample_repo(tmp_path / "calc")
    # The worker pipeline alone: no gate judges the branches, no postmortem (test_loop.py has them).
    (r / "factory.yaml").write_text(WORKERS_ONLY.format(n=3))
    git(r, "add", "factory.yaml")
    git(r, "commit", "-qm", "three workers")
    return r


@pytest.fixture
def api():
    with ScriptedModel([responder] * 200) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def env(tool_env, api, tmp_path):
    return spawn_env(tool_env, api, tmp_path / "runs", FACTORY_CPUS="64", FACTORY_MEMORY="256g")


class ContainerWatch(threading.Thread):
    """Counts this test's worker containers running at once."""

    def __init__(self, repo):
        super().__init__(daemon=True)
        self.repo, self.peak, self.done = str(repo), 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            out = subprocess.run(["docker", "ps", "-q", "--filter", "label=factory.kind=worker",
                                  "--filter", f"label=factory.repo={self.repo}/.git"], capture_output=True, text=True)
            self.peak = max(self.peak, len(out.stdout.split()))
            time.sleep(0.1)


def issues(repo, env):
    out = run_tool(["factory-issue", "list"], cwd=repo, env=env).stdout
    return [json.loads(line) for line in out.splitlines()]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_supervisor_outlives_its_test():
    yield
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def start(repo, env, *args):
    p = subprocess.Popen([os.path.join(BIN, "factory"), "start", *args], cwd=repo, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(p)
    return p


def assert_all_in_review_once(repo, env, n):
    got = issues(repo, env)
    assert len(got) == n
    for i in got:
        assert i["state"] == "review", i
        assert len(i["runs"]) == 1, f"{i['id']} ran {len(i['runs'])} times"
        assert git(repo, "show", f"factory/{i['id']}:{i['id']}.txt") == i["id"]


def no_containers_left(repo):
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=factory.repo={repo}/.git"],
                         capture_output=True, text=True).stdout
    return out.split() == []


def test_five_issues_three_slots(repo, env):
    for n in range(5):
        file_issue(repo, env, title=f"task {n}")
    watch = ContainerWatch(repo)
    watch.start()
    p = start(repo, env, "--until-idle")
    out, err = p.communicate(timeout=240)
    watch.done.set()
    watch.join()
    assert p.returncode == 0, err
    assert_all_in_review_once(repo, env, 5)
    assert 2 <= watch.peak <= 3, f"peak {watch.peak} agents at once"
    lines = out.splitlines()
    assert lines[0].startswith("spawning agents  slots: 0/8") and "kernel:running" in lines[0]
    assert any("workers:3" in line for line in lines), out
    assert lines[-1].endswith("kernel:stopped")
    status = json.loads(run_tool(["factory", "status", "--json"], cwd=repo, env=env).stdout)
    assert status["agents"] == [] and status["slots"]["used"] == 0 and not status["supervisor"]["running"]
    assert status["issues"]["by_state"] == {"review": 5}
    assert no_containers_left(repo)
    log = run_tool(["factory", "logs", lines and issues(repo, env)[0]["id"]], cwd=repo, env=env)
    assert log.returncode == 0


def wait_for(cond, timeout=60):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.1)


def running_agents(repo, env):
    return json.loads(run_tool(["factory", "status", "--json"], cwd=repo, env=env).stdout)["agents"]


def test_kill_9_of_the_supervisor_then_restart_loses_nothing_and_runs_nothing_twice(repo, env):
    for n in range(5):
        file_issue(repo, env, title=f"task {n}")
    p = start(repo, env)
    wait_for(lambda: len(running_agents(repo, env)) == 3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    again = start(repo, env, "--until-idle")
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    # the agents the killed supervisor left finish on their own; wait for them too
    wait_for(lambda: running_agents(repo, env) == [])
    assert_all_in_review_once(repo, env, 5)
    assert no_containers_left(repo)


def test_a_second_supervisor_refuses_to_start(repo, env):
    file_issue(repo, env)
    p = start(repo, env)
    try:
        wait_for(lambda: json.loads(run_tool(["factory", "status", "--json"], cwd=repo, env=env).stdout)
                 ["supervisor"]["running"])
        second = run_tool(["factory", "start"], cwd=repo, env=env)
        assert second.returncode == 3 and "already runs" in second.stderr
        # nor from a linked worktree of the same repository, nor with a state dir of its own
        worktree = repo.parent / "wt"
        git(repo, "worktree", "add", "-q", str(worktree))
        third = run_tool(["factory", "start"], cwd=worktree, env=env)
        assert third.returncode == 3 and "already runs" in third.stderr, third.stderr
        fourth = run_tool(["factory", "start"], cwd=repo, env=dict(env, FACTORY_STATE_DIR=str(repo.parent / "st")))
        assert fourth.returncode == 3 and "already runs" in fourth.stderr, fourth.stderr
    finally:
        assert run_tool(["factory", "stop"], cwd=repo, env=env, timeout=120).returncode == 0
        p.wait(timeout=30)
    assert issues(repo, env)[0]["state"] == "review", "a graceful stop lets the running agent finish"


def test_stop_now_requeues_running_work_uncounted(repo, env):
    for n in range(2):
        file_issue(repo, env, title=f"task {n}")
    p = start(repo, env)
    wait_for(lambda: len(running_agents(repo, env)) == 2)
    r = run_tool(["factory", "stop", "--now"], cwd=repo, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    p.wait(timeout=30)
    for i in issues(repo, env):
        assert i["state"] == "open" and i["attempts"] == 0 and i["claimed_by"] is None, i
        assert len(i["runs"]) == 1, "the stopped run was recorded"
        run = json.loads(git(repo, "show", f"refs/factory/runs/{i['runs'][0]}:run.json"))
        assert run["reason"] == "interrupted by a signal"
    assert no_containers_left(repo)


def test_a_container_killed_from_outside_is_retried(repo, env):
    (issue,) = [file_issue(repo, env)]
    killed = []

    def killer():
        while not killed:
            ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=factory.issue={issue['id']}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "kill", *ids], capture_output=True)
                killed.extend(ids)
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    p = start(repo, env, "--until-idle")
    out, err = p.communicate(timeout=240)
    t.join(timeout=5)
    assert p.returncode == 0, err
    final = issues(repo, env)[0]
    assert killed and final["state"] == "review" and final["attempts"] == 1 and len(final["runs"]) == 2, final["comments"]
    assert no_containers_left(repo)


class EngineCut:
    """A scripted model that makes certain each of n agents' runs meets a dead engine: every
    agent's first turn creates its file (so its container is up and works); its second
    turn waits until all n agents are there and the test has stopped the engine, then
    calls a tool, which can only fail. Later turns, and every turn once the cut is over
    (the re-runs), answer as `responder` does. Runs in the model server's threads."""

    def __init__(self, n, timeout=120):
        self.timeout = timeout
        self.arrived = threading.Barrier(n + 1, timeout=timeout)  # the last party is the test
        self.stopped = threading.Event()

    def __call__(self, body):
        messages = body["messages"]
        issue_id = re.search(r'"id": "([0-9a-f]{12})"', messages[0]["content"][0]["text"]).group(1)
        results = sum(1 for m in messages if m["role"] == "user"
                      for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result")
        if results == 0:
            return tool_use("str_replace_based_edit_tool", {
                "command": "create", "path": f"/workspace/repo/{issue_id}.txt", "file_text": issue_id})
        if results == 1 and not self.stopped.is_set():
            self.arrived.wait()  # BrokenBarrierError on timeout: a server error, the test fails
            if not self.stopped.wait(self.timeout):
                raise AssertionError("the test did not stop the engine")
            return tool_use("bash", {"command": "echo the engine is gone by now"})
        return text("done")

    def wait_for_agents(self):
        """Until every agent holds its second turn."""
        self.arrived.wait()


@pytest.fixture
def engine(default_image):
    """A Docker engine of this test's own, holding the agent image; stopped and removed
    after the test whatever happened, with whatever it still runs."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("under CI a private Docker engine must start (CI runs as root)")
        pytest.skip("a private Docker engine needs root")
    e = PrivateEngine(prefix="factory-sup")
    try:
        e.start()
        e.load_image(default_image)
        yield e
    finally:
        e.stop()


class StatusLines(threading.Thread):
    """The supervisor's status lines (one per change when stdout is not a terminal), as
    they come."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, []
        self.start()

    def run(self):
        for line in self.stream:
            self.lines.append(line.rstrip("\n"))


def test_dockerd_stopped_mid_run_and_started_again_loses_no_issue(repo, env, engine, tmp_path):
    """Runs the engine took down are recorded, re-queued uncounted, and run again once it
    is back; meanwhile the supervisor says it waits for docker. On an engine of the test's
    own: the machine's engine is never touched. A slot more than there are issues: an
    --until-idle supervisor whose last look found no more work must still wait for the
    runs the engine cut."""
    n = 3
    (repo / "factory.yaml").write_text(WORKERS_ONLY.format(n=n + 1))
    git(repo, "commit", "-qam", "a slot to spare")
    cut = EngineCut(n)
    env = engine.env(env)
    with ScriptedModel([cut] * 100) as api, open(tmp_path / "supervisor.err", "w+") as err:
        env["ANTHROPIC_BASE_URL"] = api.base_url
        for k in range(n):
            file_issue(repo, env, title=f"task {k}")
        p = subprocess.Popen([os.path.join(BIN, "factory"), "start", "--until-idle"], cwd=repo, env=env,
                             stdout=subprocess.PIPE, stderr=err, text=True)
        STARTED.append(p)
        try:
            status = StatusLines(p.stdout)
            cut.wait_for_agents()
            engine.stop_daemon()
            cut.stopped.set()  # the agents' tool calls go out now, to a dead engine

            def waiting():
                s = json.loads(run_tool(["factory", "status", "--json"], cwd=repo, env=env).stdout)
                return (not s["engine"]["ok"] and s["supervisor"]["running"]
                        and any(line.endswith("kernel:waiting for docker") for line in status.lines))
            wait_for(waiting, timeout=60)
            engine.start()
            p.wait(timeout=120)
            status.join(timeout=10)
        finally:
            cut.arrived.abort()  # no model thread waits on a test that has failed
            cut.stopped.set()
            if p.poll() is None:  # stop its agents too, before the engine's teardown
                p.send_signal(signal.SIGUSR1)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            err.seek(0)
            log = err.read()
    assert api.errors == []
    assert p.returncode == 0, log
    assert status.lines[-1].endswith("kernel:stopped"), status.lines
    got = issues(repo, env)
    assert [i["state"] for i in got] == ["review"] * n, [(i["state"], i["comments"]) for i in got]
    for i in got:
        assert i["attempts"] == 0, f"the engine's failure is not the issue's: {i['comments']}"
        assert len(i["runs"]) == 2, f"{i['id']} ran {len(i['runs'])} times: {i['comments']}"
        assert any("not answering" in c["text"] for c in i["comments"]), i["comments"]
        assert git(repo, "show", f"factory/{i['id']}:{i['id']}.txt") == i["id"]
        # The first run is the one the engine cut, recorded as such: it got to its tool call.
        cut_run = json.loads(git(repo, "show", f"refs/factory/runs/{i['runs'][0]}:run.json"))
        assert cut_run["infra"] and cut_run["status"] == "error" and cut_run["turns"] == 2, cut_run
        assert "not answering" in cut_run["reason"], cut_run["reason"]
        transcript = git(repo, "show", f"refs/factory/runs/{i['runs'][0]}:transcript.json")
        assert "the engine is gone by now" in transcript
    assert "the Docker engine answers again" in log
    assert engine.containers() == [], "a container was left in the private engine"


def test_detach_status_logs_and_stop(repo, env):
    r = run_tool(["factory", "start", "--detach"], cwd=repo, env=env)
    assert r.returncode == 0 and "in the background" in r.stderr
    try:
        wait_for(lambda: json.loads(run_tool(["factory", "status", "--json"], cwd=repo, env=env).stdout)
                 ["supervisor"]["running"])
        issue = file_issue(repo, env)
        wait_for(lambda: issues(repo, env)[0]["state"] == "review", timeout=120)
        human = run_tool(["factory", "status"], cwd=repo, env=env).stdout
        assert "kernel   running (pid" in human
        log = run_tool(["factory", "logs"], cwd=repo, env=env)
        assert log.returncode == 0 and "kernel:running" in log.stdout
        assert f"worker started on {issue['id']}" in log.stdout or "worker started" in log.stdout
    finally:
        assert run_tool(["factory", "stop"], cwd=repo, env=env, timeout=120).returncode == 0
    assert run_tool(["factory", "stop"], cwd=repo, env=env).returncode == 1  # none runs now


BROKEN_CONFIG = "slots:\n  worker: 3\n  wrkers: 2\nbudgets:\n  retry_backoff_seconds: 0\n"


def test_a_config_broken_while_running_touches_no_issue_and_work_resumes_once_it_is_fixed(repo, tool_env, tmp_path):
    """The first agent's first model request breaks factory.yaml and then files a second
    issue, so the supervisor meets the second issue only ever with the config broken."""
    good_config = (repo / "factory.yaml").read_text()
    later = []

    def break_config_then_file(body):
        if not later:
            (repo / "factory.yaml").write_text(BROKEN_CONFIG)
            later.append(file_issue(repo, env, title="filed while factory.yaml is broken"))
        return responder(body)

    with ScriptedModel([break_config_then_file] * 20) as api:
        env = spawn_env(tool_env, api, tmp_path / "runs", FACTORY_CPUS="64", FACTORY_MEMORY="256g")
        first = file_issue(repo, env, title="running when factory.yaml breaks")
        p = start(repo, env, "--until-idle")

        def waiting():
            return json.loads(run_tool(["factory", "status", "--json"], cwd=repo, env=env).stdout)["supervisor"]["waiting"]

        wait_for(lambda: waiting() is not None, timeout=120)
        assert "factory.yaml line 3: slots.wrkers: unknown key" in waiting()
        human = run_tool(["factory", "status"], cwd=repo, env=env)
        assert human.returncode == 1 and "waiting: " in human.stdout and "factory.yaml line 3" in human.stdout
        (second,) = later
        assert git(repo, "rev-list", "--count", f"refs/factory/issues/{second['id']}") == "1", "never touched"
        # The first agent was already running: it finishes as if nothing happened.
        wait_for(lambda: {i["id"]: i["state"] for i in issues(repo, env)}[first["id"]] == "review", timeout=120)
        assert git(repo, "rev-list", "--count", f"refs/factory/issues/{second['id']}") == "1", "still untouched"
        (repo / "factory.yaml").write_text(good_config)
        out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    assert "factory.yaml is fine again" in err
    got = {i["id"]: i for i in issues(repo, env)}
    for i in got.values():
        assert (i["state"], i["attempts"], len(i["runs"])) == ("review", 0, 1), i
    assert no_containers_left(repo)
