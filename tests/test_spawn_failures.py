"""Every way a run can end badly ends with the right status, a recorded run, the issue
settled, and no container or workspace left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import BIN
from modelserver import ScriptedModel, delay, drop, error, text, tool_use
from spawnkit import bash, containers_of_run, file_issue, git, record_file, sample_repo, spawn, spawn_env

pytestmark = pytest.mark.docker


@pytest.fixture
def repo(tmp_path):
    return sample_repo(tmp_path / "calc")


CHANGE = tool_use("str_replace_based_edit_tool", {"command": "create", "path": "/workspace/repo/x.txt", "file_text": "x"})


def issue_of(repo, env, issue_id):
    p = subprocess.run(["factory-issue", "show", issue_id, "--no-history"], cwd=repo, env=env,
                       capture_output=True, text=True)
    return json.loads(p.stdout)


def run_with(repo, tmp_path, tool_env, script, budgets=None):
    issue = file_issue(repo, tool_env)
    task = {"kind": "worker", "issue": issue, "budgets": budgets or {}}
    with ScriptedModel(script) as api:
        code, run, err = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), task)
    assert run is not None, err
    assert containers_of_run(run["run"]) == [] and os.listdir(tmp_path / "runs") == []
    recorded = json.loads(record_file(repo, run["run"], "run.json"))
    assert recorded["status"] == run["status"]
    return issue, code, run, api


def assert_requeued(repo, tool_env, issue, run, attempts=1):
    now = issue_of(repo, tool_env, issue["id"])
    assert now["state"] == "open" and now["attempts"] == attempts and now["claimed_by"] is None
    assert run["run"] in now["runs"]
    assert any(run["status"] in c["text"] for c in now["comments"])
    # not ready again before the backoff (default 60 s, doubled per attempt) has passed
    from factory.contracts import now_iso
    assert now["not_before"] and now["not_before"] > now_iso()


def test_rate_limits_overload_and_a_dropped_connection_are_retried(repo, tmp_path, tool_env):
    script = [error(429, retry_after=0), error(529, retry_after=0), drop(), CHANGE, text("done")]
    issue, code, run, api = run_with(repo, tmp_path, tool_env, script)
    assert code == 0 and run["status"] == "ok" and run["model_retries"] == 3


def test_persistent_overload_ends_as_error(repo, tmp_path, tool_env):
    issue, code, run, api = run_with(repo, tmp_path, tool_env, [error(529, retry_after=0)] * 10)
    assert code == 5 and run["status"] == "error" and "overloaded" in run["reason"]
    assert run["model_retries"] == 6, "the retries of the request that failed in the end count too"
    assert_requeued(repo, tool_env, issue, run)


def test_a_refused_api_key_is_the_factorys_trouble_not_the_issues(repo, tmp_path, tool_env):
    issue, code, run, api = run_with(repo, tmp_path, tool_env, [error(401)] * 3)
    assert code == 5 and run["status"] == "error" and run["infra"] is True
    assert "ANTHROPIC_API_KEY" in run["reason"] and run["model_retries"] == 0
    now = issue_of(repo, tool_env, issue["id"])
    assert now["state"] == "open" and now["attempts"] == 0, "not counted as an attempt"


def test_turn_budget(repo, tmp_path, tool_env):
    script = [bash(f"echo {n}") for n in range(5)]
    issue, code, run, api = run_with(repo, tmp_path, tool_env, script, budgets={"turns": 2})
    assert code == 4 and run["status"] == "budget" and "turn budget of 2" in run["reason"]
    assert run["turns"] == 2 and len(api.requests) == 2
    assert_requeued(repo, tool_env, issue, run)


def test_token_and_cost_budgets(repo, tmp_path, tool_env):
    issue, code, run, api = run_with(repo, tmp_path, tool_env, [bash("echo 1"), bash("echo 2")],
                                     budgets={"tokens": 10})
    assert code == 4 and "token budget" in run["reason"] and run["turns"] == 1
    issue, code, run, api = run_with(repo, tmp_path, tool_env, [bash("echo 1"), bash("echo 2")],
                                     budgets={"cost_usd": 0.000001})
    assert code == 4 and "cost budget" in run["reason"]


def test_wall_time_ends_as_timeout_never_a_hang(repo, tmp_path, tool_env):
    t = time.monotonic()
    issue, code, run, api = run_with(repo, tmp_path, tool_env, [bash("sleep 60"), bash("true")],
                                     budgets={"wall_seconds": 4})
    assert code == 3 and run["status"] == "timeout"
    assert time.monotonic() - t < 40


def test_a_stuck_agent_is_stopped(repo, tmp_path, tool_env):
    issue, code, run, api = run_with(repo, tmp_path, tool_env, [bash("cat calc.py")] * 10)
    assert code == 6 and run["status"] == "stuck" and run["turns"] == 3


def test_a_container_killed_from_outside_ends_as_failed(repo, tmp_path, tool_env):
    def kill_then_call(body):
        # only this test's container: never one another run on the same engine started
        ids = subprocess.run(["docker", "ps", "-q", "--filter", "label=factory.kind=worker",
                              "--filter", f"label=factory.repo={repo}/.git"],
                             capture_output=True, text=True).stdout.split()
        assert len(ids) == 1, ids
        subprocess.run(["docker", "kill", *ids], capture_output=True)
        return bash("echo are you there")

    issue, code, run, api = run_with(repo, tmp_path, tool_env, [bash("true"), kill_then_call, text("done")])
    assert code == 1 and run["status"] == "failed" and "container is gone" in run["reason"]
    assert_requeued(repo, tool_env, issue, run)


def test_past_the_attempt_limit_the_issue_is_failed(repo, tmp_path, tool_env):
    (repo / "factory.yaml").write_text("budgets:\n  attempts: 1\n")
    git(repo, "add", "factory.yaml")
    git(repo, "commit", "-qm", "one attempt")
    issue, code, run, api = run_with(repo, tmp_path, tool_env, [text("I will not do anything")])
    assert code == 1 and run["status"] == "failed"
    assert issue_of(repo, tool_env, issue["id"])["state"] == "failed"


def start_spawn(repo, env, task):
    p = subprocess.Popen([os.path.join(BIN, "factory-spawn")], cwd=repo, env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdin.write(json.dumps(task) + "\n")
    p.stdin.close()
    p.stdin = None  # so communicate() does not touch it again
    return p


def wait_for_container(issue_id, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=factory.issue={issue_id}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            return ids
        time.sleep(0.2)
    raise AssertionError("no container appeared")


def test_sigterm_cleans_up_records_and_requeues_without_counting(repo, tmp_path, tool_env):
    issue = file_issue(repo, tool_env)
    with ScriptedModel([bash("true"), delay(60, text("too late"))]) as api:
        p = start_spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), issue)
        wait_for_container(issue["id"])
        while len(api.requests) < 2:
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    run = json.loads(out)
    assert p.returncode == 5 and run["reason"] == "interrupted by a signal", err
    assert containers_of_run(run["run"]) == [] and os.listdir(tmp_path / "runs") == []
    now = issue_of(repo, tool_env, issue["id"])
    assert now["state"] == "open" and now["attempts"] == 0


def test_kill_9_of_spawn_leaves_nothing_the_next_spawn_does_not_remove(repo, tmp_path, tool_env):
    first, second = file_issue(repo, tool_env, title="first"), file_issue(repo, tool_env, title="second")
    with ScriptedModel([delay(60, text("never seen")), CHANGE, text("done")]) as api:
        env = spawn_env(tool_env, api, tmp_path / "runs")
        p = start_spawn(repo, env, first)
        orphans = wait_for_container(first["id"])
        while not api.requests:
            time.sleep(0.1)
        p.kill()
        p.wait()
        assert len(os.listdir(tmp_path / "runs")) == 1, "the killed spawn left its workspace"
        code, run, err = spawn(repo, env, second)
    assert code == 0, err
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=factory.issue={first['id']}"],
                          capture_output=True, text=True).stdout.split()
    assert left == [], f"orphan {orphans} was not reaped"
    assert os.listdir(tmp_path / "runs") == []
    # and the claim the killed spawn held came back by itself: open, uncounted, once
    back = issue_of(repo, tool_env, first["id"])
    assert back["state"] == "open" and back["attempts"] == 0 and back["lease"] is None, back
    assert [c["text"] for c in back["comments"]] == [f"re-queued: its holder (pid {p.pid}) is gone "
                                                     "(not counted as an attempt)"]


def test_a_claim_handed_over_and_then_killed_comes_back_once(repo, tmp_path, tool_env):
    """`next --claim | factory-spawn`, and the spawn killed: the lease it took over names
    it, so the issue does not wait for the claiming shell to go."""
    issue = file_issue(repo, tool_env)
    claimed = subprocess.run(["factory-issue", "next", "--claim"], cwd=repo, env=tool_env, capture_output=True,
                             text=True)
    handed = json.loads(claimed.stdout)
    assert handed["lease"]["owner"]["pid"] == os.getpid(), "the claimer's parent holds the lease"
    with ScriptedModel([delay(60, text("never seen"))]) as api:
        env = spawn_env(tool_env, api, tmp_path / "runs")
        p = start_spawn(repo, env, handed)
        deadline = time.monotonic() + 120
        while not api.requests:  # the spawn holds the claim once it asks the model
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.1)
        held = issue_of(repo, tool_env, issue["id"])
        assert held["lease"]["owner"]["pid"] == p.pid and held["claim_token"] == handed["claim_token"]
        p.kill()
        p.wait()
    from factory.gitstore import Repo
    from factory.issues import IssueStore
    store = IssueStore(Repo(repo))
    assert store.requeue_dead_claims("reaper:test") == [issue["id"]]
    assert store.requeue_dead_claims("reaper:test") == [], "once"
    back = issue_of(repo, tool_env, issue["id"])
    assert back["state"] == "open" and back["attempts"] == 0
    from factory import sandbox
    sandbox.reap(filters={"factory.issue": issue["id"]})  # what the next spawn would do
    assert subprocess.run(["docker", "ps", "-aq", "--filter", f"label=factory.issue={issue['id']}"],
                          capture_output=True, text=True).stdout.split() == []


def test_cleanup_finds_a_container_it_was_never_handed(tmp_path, monkeypatch):
    """A signal between the container's creation and spawn holding it must not leak it."""
    from factory import config, images, sandbox, spawn
    from factory.gitstore import Repo
    from factory.workspace import Workspace
    monkeypatch.setenv("FACTORY_RUNS_DIR", str(tmp_path / "runs"))
    image = images.ensure_image(images.recipe_from_config(config.DEFAULTS), log=lambda m: None)
    repo = Repo(sample_repo(tmp_path / "calc"))
    ws = Workspace(repo, "20990101T000000Z-cleanup").create()
    sb = sandbox.Sandbox.start(image, labels={"factory.run": ws.run_id, "factory.repo": repo.common_dir},
                               cpus=0.5, memory="128m", pids=32, tmp_size="16m", disk="16m", deadline_s=300)
    assert containers_of_run(ws.run_id) == [sb.id[:12]]
    spawn._clean_up(repo, None, ws, ws.run_id)  # handed no container, as after such a signal
    assert containers_of_run(ws.run_id) == [] and not os.path.exists(ws.root)


def test_a_run_cut_by_the_engine_is_not_counted_though_the_engine_is_back_at_its_end(repo, tmp_path, tool_env,
                                                                                      monkeypatch):
    """The agent's second tool call cannot reach the engine (docker-py's ConnectionError,
    as when dockerd has stopped); by the time the run ends the engine answers again (a
    service manager restarted it). The run is still the engine's failure, not the issue's:
    recorded, re-queued uncounted, said so; it ends at once instead of the model being
    told to try again. In process, so that only this run's calls fail: the engine itself
    is never touched."""
    import docker
    import requests
    from factory import config, contracts, spawn as spawn_mod
    from factory.gitstore import Repo
    issue = file_issue(repo, tool_env)
    gone = []
    real_exec_create = docker.api.client.APIClient.exec_create

    def exec_create(self, *a, **k):
        if gone:
            raise requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError(2, "
                                                      "'No such file or directory'))")
        return real_exec_create(self, *a, **k)

    def engine_stops(body):
        gone.append(True)
        return bash("echo are you there")

    monkeypatch.setattr(docker.api.client.APIClient, "exec_create", exec_create)
    with ScriptedModel([CHANGE, engine_stops, text("done")]) as api:
        for k, v in spawn_env(tool_env, api, tmp_path / "runs").items():
            monkeypatch.setenv(k, v)
        monkeypatch.chdir(repo)
        r = Repo(str(repo))
        task = contracts.validate_task({"kind": "worker", "issue": issue})
        run = spawn_mod.run_task(task, r, config.load(str(repo)), log=spawn_mod.Log(echo=False))
    assert len(api.requests) == 2, "the model was asked again after the engine was gone"
    assert run["status"] == "error" and run["infra"] and run["turns"] == 2, run
    assert "stopped answering" in run["reason"] and "not answering" in run["reason"], run["reason"]
    now = issue_of(repo, tool_env, issue["id"])
    assert now["state"] == "open" and now["attempts"] == 0 and not now.get("not_before"), now
    assert any("not answering" in c["text"] for c in now["comments"])
    assert containers_of_run(run["run"]) == [] and os.listdir(tmp_path / "runs") == []
