"""The whole loop under `factory start`: a worker's branch is judged by the gate and, with
merge: auto, landed by the merge queue; a false claim of success is refused, retried with
the verdict in front of the next worker, and failed past budgets.attempts."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import BIN, run_tool
from modelserver import ScriptedModel, text, tool_use
from spawnkit import CALC, git, sample_repo, spawn_env, file_issue

pytestmark = pytest.mark.docker

FIX = "sed -i 's/a - b/a + b/' calc.py && python3 -m unittest -q test_calc && git add -A && git commit -qm 'add adds'"
CLAIM = "echo 'looked into it' > NOTES.txt && git add -A && git commit -qm 'fixed add (honestly)'"


def agent(command):
    """A worker that runs one command, then says it is done."""
    def respond(body):
        last = body["messages"][-1]["content"]
        if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
            return text("Done: add() is fixed.")
        return tool_use("bash", {"command": command})
    return respond


def loop_repo(tmp_path, config):
    r = sample_repo(tmp_path / "calc")
    (r / "factory.yaml").write_text(config)
    git(r, "add", "factory.yaml")
    git(r, "commit", "-qm", "factory.yaml")
    return r


def run_until_idle(repo, env, timeout=420):
    p = subprocess.run([os.path.join(BIN, "factory"), "start", "--until-idle"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return p


def show(repo, env, issue_id):
    return json.loads(run_tool(["factory-issue", "show", issue_id], cwd=repo, env=env).stdout)


def test_a_real_fix_passes_the_gate_and_lands_on_the_checked_out_main(tmp_path, tool_env):
    repo = loop_repo(tmp_path, "merge: auto\nslots:\n  postmortem: 0\n")
    with ScriptedModel([agent(FIX)] * 10) as api:
        env = spawn_env(tool_env, api, tmp_path / "runs", FACTORY_CPUS="64", FACTORY_MEMORY="256g")
        issue = file_issue(repo, env)
        p = run_until_idle(repo, env)
    assert "merged" in p.stderr, p.stderr
    got = show(repo, env, issue["id"])
    assert got["state"] == "done" and got["verdict"]["verdict"] == "pass", got
    assert "a + b" in git(repo, "show", "main:calc.py")
    assert "a + b" in (repo / "calc.py").read_text()      # the checked-out main shows the work
    assert git(repo, "status", "--porcelain") == ""       # and git status is clean


def test_a_false_claim_is_refused_retried_with_the_verdict_then_failed(tmp_path, tool_env):
    repo = loop_repo(tmp_path, "merge: auto\nslots:\n  postmortem: 0\n"
                               "budgets:\n  attempts: 2\n  retry_backoff_seconds: 0\n")
    main_before = git(repo, "rev-parse", "main")
    with ScriptedModel([agent(CLAIM)] * 10) as api:
        env = spawn_env(tool_env, api, tmp_path / "runs", FACTORY_CPUS="64", FACTORY_MEMORY="256g")
        issue = file_issue(repo, env)
        run_until_idle(repo, env)
        firsts = [r["messages"][0]["content"] for r in api.requests if len(r["messages"]) == 1]
    got = show(repo, env, issue["id"])
    assert got["state"] == "failed" and got["attempts"] == 2, got
    gate_comments = [c["text"] for c in got["comments"] if c["author"].startswith("merge:")]
    assert len(gate_comments) == 2 and "AssertionError" in gate_comments[0]
    assert "test_calc" in got["verdict"]["summary"] or "unittest" in got["verdict"]["summary"]
    # The second worker started from the verdict; the first had none to start from.
    texts = [json.dumps(c) for c in firsts]
    assert len(texts) == 2
    assert "refused by the gate" not in texts[0] and "refused by the gate" in texts[1]
    assert "AssertionError" in texts[1]
    assert git(repo, "rev-parse", "main") == main_before and (repo / "calc.py").read_text() == CALC


def test_with_a_dirty_main_the_queue_waits_saying_why_and_touches_nothing(tmp_path, tool_env):
    repo = loop_repo(tmp_path, "merge: auto\nslots:\n  postmortem: 0\n")
    mine = "# my notes, not committed\n"
    with ScriptedModel([agent(FIX)] * 10) as api:
        env = spawn_env(tool_env, api, tmp_path / "runs", FACTORY_CPUS="64", FACTORY_MEMORY="256g")
        issue = file_issue(repo, env)
        (repo / "test_calc.py").write_text((repo / "test_calc.py").read_text() + mine)
        p = run_until_idle(repo, env)
        assert "merge waits: work tree" in p.stderr and "uncommitted changes" in p.stderr, p.stderr
        assert show(repo, env, issue["id"])["state"] == "review"
        assert (repo / "test_calc.py").read_text().endswith(mine) and (repo / "calc.py").read_text() == CALC
        git(repo, "checkout", "--", "test_calc.py")        # the user is done with their edit
        run_until_idle(repo, env)
    assert show(repo, env, issue["id"])["state"] == "done"
    assert "a + b" in (repo / "calc.py").read_text() and git(repo, "status", "--porcelain") == ""
