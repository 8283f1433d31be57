"""Exit codes along the chain: factory start decides from the run JSON and from named
exit codes, never from a bare number, so no issue is claimed for work that can never run,
and none is charged, failed or blamed for the factory's own trouble; factory-spawn tells
the factory's trouble (78) from a bad task (2). None of these tests needs an agent to run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest
from conftest import BIN, run_tool
from spawnkit import file_issue, git, sample_repo

from factory import exits


@pytest.fixture
def repo(tmp_path):
    return sample_repo(tmp_path / "calc")


@pytest.fixture
def env(tool_env, tmp_path):
    # No model is ever asked: a key that would fail if one were.
    return dict(tool_env, ANTHROPIC_API_KEY="sk-ant-test-unused", ANTHROPIC_BASE_URL="http://127.0.0.1:9",
                FACTORY_RUNS_DIR=str(tmp_path / "runs"), FACTORY_CPUS="64", FACTORY_MEMORY="256g")


def events(repo, issue_id):
    return int(git(repo, "rev-list", "--count", f"refs/factory/issues/{issue_id}"))


def test_a_request_that_can_never_fit_claims_nothing_and_until_idle_gives_up_at_once(repo, env):
    issue = file_issue(repo, env)
    small = dict(env, FACTORY_MEMORY="1m")
    t0 = time.monotonic()
    p = subprocess.run([os.path.join(BIN, "factory"), "start", "--until-idle"], cwd=repo, env=small,
                       capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == exits.START_CANNOT_FIT, (p.returncode, p.stderr)
    assert took < 20, f"took {took:.1f} s"
    assert "memory: a worker asks for 2 GiB (resources.worker.memory) and this machine allows 1 MiB " \
           "(FACTORY_MEMORY=1m)" in p.stderr, p.stderr
    assert events(repo, issue["id"]) == 1, "nothing but its filing: never claimed"
    status = run_tool(["factory", "status", "--json"], cwd=repo, env=small)
    assert status.returncode == exits.NO
    assert "memory: a worker asks for 2 GiB" in json.loads(status.stdout)["never_fit"]["worker"]
    human = run_tool(["factory", "status"], cwd=repo, env=small).stdout
    assert "blocked  worker: memory: a worker asks for 2 GiB" in human
    # With enough memory the same issue is ready, and status has nothing to complain of.
    assert json.loads(run_tool(["factory", "status", "--json"], cwd=repo, env=env).stdout)["never_fit"] == {}


def test_a_worker_quota_of_0_with_ready_work_gives_up_too(repo, env):
    (repo / "factory.yaml").write_text("slots:\n  worker: 0\n")
    issue = file_issue(repo, env)
    p = subprocess.run([os.path.join(BIN, "factory"), "start", "--until-idle"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == exits.START_CANNOT_FIT and "slots.worker is 0" in p.stderr, p.stderr
    assert events(repo, issue["id"]) == 1


# -- settle(): what the supervisor does after a spawn ended -------------------------------

def settle_after(repo, env, exit_code, run=None):
    """Claim an issue as the supervisor would, let a child end with `exit_code` (having
    printed `run`, if given), and settle it; return the issue as it then stands."""
    from factory import config
    from factory.gitstore import Repo
    from factory.supervisor import Agent, Supervisor

    r = Repo(str(repo))
    sup = Supervisor(r, config.load(str(repo)), out=open(os.devnull, "w"))
    issue = file_issue(repo, env)
    claimed = sup.store.claim(issue["id"], sup.actor)
    os.makedirs(sup.logs, exist_ok=True)
    with open(os.path.join(sup.logs, f"{issue['id']}.run.json"), "w") as f:
        f.write(json.dumps(run) + "\n" if run else "")
    proc = subprocess.Popen(["sh", "-c", "kill -9 $$" if exit_code < 0 else f"exit {exit_code}"])
    agent = Agent(kind="worker", proc=proc, phase="spawn", issue=claimed)
    proc.wait()
    agent.close()
    sup.settle(agent)
    return sup.store.get(issue["id"])


@pytest.mark.parametrize("code", [exits.SLOT_CONFIG, exits.SLOT_CANNOT_FIT, exits.SLOT_USAGE, exits.SLOT_BUSY,
                                  exits.SPAWN_CONFIG, exits.INTERRUPTED, exits.NO, -9])
def test_a_spawn_that_printed_no_run_is_handed_back_uncounted_whatever_refused_it(repo, env, code):
    got = settle_after(repo, env, code)
    assert (got["state"], got["attempts"], got["claimed_by"]) == ("open", 0, None), got
    assert got["comments"] == [], "nobody is blamed"


def test_only_a_task_factory_spawn_refused_is_failed(repo, env):
    got = settle_after(repo, env, exits.SPAWN_BAD_TASK)
    assert got["state"] == "failed" and "refused this issue as a task" in json.dumps(got)


def test_a_spawn_that_printed_a_run_is_judged_by_it_not_by_its_code(repo, env):
    # A landed run: factory-spawn settled the issue itself; whatever the code, it is left alone.
    got = settle_after(repo, env, exits.SPAWN_BAD_TASK, run={"run": "r1", "status": "failed", "landed": True,
                                                        "infra": False, "reason": "x"})
    assert got["state"] == "claimed", "left as factory-spawn settled it (here: the test's claim)"
    # A run that landed nothing and left the claim: handed back, uncounted, even with code 2.
    got = settle_after(repo, env, exits.SPAWN_BAD_TASK, run={"run": "r2", "status": "error", "landed": None,
                                                        "infra": True, "reason": "x"})
    assert (got["state"], got["attempts"]) == ("open", 0)


# -- factory-spawn: the factory's own set-up is never the task's fault -----------------------

def test_factory_spawn_says_78_not_2_when_the_factory_is_not_set_up(repo, env):
    """2 would fail the issue under the supervisor: an invalid factory.yaml or a missing
    key is the factory's trouble, so it has a code of its own; nothing is touched."""
    issue = file_issue(repo, env)
    (repo / "factory.yaml").write_text("slots:\n  worker: 3\n  wrkers: 2\n")
    r = run_tool(["factory-spawn"], cwd=repo, env=env, input=json.dumps(issue))
    assert r.returncode == exits.SPAWN_CONFIG and r.stdout == ""
    assert "factory.yaml line 3: slots.wrkers: unknown key" in r.stderr
    (repo / "factory.yaml").unlink()
    no_key = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    r = run_tool(["factory-spawn"], cwd=repo, env=no_key, input=json.dumps(issue))
    assert r.returncode == exits.SPAWN_CONFIG and "ANTHROPIC_API_KEY is not set" in r.stderr
    r = run_tool(["factory-spawn"], cwd=repo, env=env, input='{"kind": "worker"}')
    assert r.returncode == exits.SPAWN_BAD_TASK, "a bad task is still 2"
    assert events(repo, issue["id"]) == 1


def test_spawns_that_keep_ending_with_no_run_pause_claims_instead_of_looping(repo, env, tmp_path):
    """factory-spawn missing (factory-slot exits 127): each hand-back is uncounted, but the
    next claim waits 1 s, then 2 s, then 4 s: never a tight claim/hand-back loop."""
    issue = file_issue(repo, env)
    tools = tmp_path / "tools"  # factory-issue and factory-slot, but no factory-spawn
    tools.mkdir()
    for name in ("factory-issue", "factory-slot"):
        (tools / name).symlink_to(os.path.join(BIN, name))
    code = ("import sys; from factory import config; from factory.gitstore import Repo;"
            "from factory.supervisor import Supervisor;"
            f"sys.exit(Supervisor(Repo(), config.load('.'), bin_dir={str(tools)!r}).run())")
    lib = os.path.join(os.path.dirname(BIN), "lib")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=repo, env=dict(env, PYTHONPATH=lib),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 60
        while "no claim for 4 s" not in seen:  # the third hand-back
            assert time.monotonic() < deadline and p.poll() is None, seen
            seen += p.stderr.readline()
    finally:
        p.terminate()  # graceful: it finishes the step it is in
        err = p.communicate(timeout=30)[1]
    assert "exit 127 before it printed a run" in seen + err
    from factory.gitstore import Repo
    from factory.issues import IssueStore
    history = IssueStore(Repo(str(repo))).history(issue["id"])
    claims = [e["at"] for e in history if e["type"] == "claim"]
    assert len(claims) == 3, [e["type"] for e in history]
    got = IssueStore(Repo(str(repo))).get(issue["id"])
    assert (got["state"], got["attempts"], got["comments"]) == ("open", 0, [])
    t = [datetime.strptime(c, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() for c in claims]
    assert t[1] - t[0] >= 1 and t[2] - t[1] >= 2, "each pause at least as long as it said"
