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


NO_TEST_DELETION = ("---\ncheck: test -z \"$(git diff --name-only --diff-filter=D \"$FACTORY_BASE\" HEAD)\"\n---\n"
                    "# No test is deleted\n\nA failing test is fixed, never removed.\n")
DELETE_TEST = "git rm -q test_calc.py && git commit -qm 'the failing test was wrong'"
EDIT_RULES = ("printf 'check: true\\n' > intent/prohibitions/no-test-deletion.md && "
              "printf 'merge: auto\\n' > factory.yaml && git commit -qam 'simpler rules'")


def worker_or_postmortem(command, lesson_check):
    """A worker that runs `command`; a postmortem agent that reports a prohibition whose
    check is `lesson_check`, as a real model calls the tool: once, all fields given."""
    work = agent(command)

    def respond(body):
        if any(t.get("name") == "report_postmortem" for t in body.get("tools") or []):
            return tool_use("report_postmortem", {
                "title": "The worker made the check pass by removing what it checks",
                "what_was_tried": "The worker was to fix add().",
                "what_failed": "The gate refused the branch.",
                "root_cause": "The worker changed what judges the work instead of the work.",
                "contributing_factors": ["the failing test was easier to remove than to satisfy"],
                "what_should_have_happened": "Fix calc.add so that test_calc passes.",
                "lesson": {"kind": "prohibition", "title": "Keep the tests and the rules",
                           "text": "Never delete a test or edit the rules that judge your branch.",
                           "check": lesson_check}})
        return work(body)
    return respond


@pytest.mark.parametrize("command,refused_by,lesson_check", [
    (DELETE_TEST, "prohibition", "test -f test_calc.py"),
    (EDIT_RULES, "policy", 'git diff --quiet "$FACTORY_BASE" HEAD -- factory.yaml')])
def test_each_refusal_is_on_its_issue_and_becomes_a_lesson(tmp_path, tool_env, command, refused_by, lesson_check):
    repo = loop_repo(tmp_path, "merge: auto\nbudgets:\n  attempts: 1\n  retry_backoff_seconds: 0\n")
    (repo / "intent" / "prohibitions").mkdir(parents=True)
    (repo / "intent" / "prohibitions" / "no-test-deletion.md").write_text(NO_TEST_DELETION)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a prohibition")
    main_before = git(repo, "rev-parse", "main")
    with ScriptedModel([worker_or_postmortem(command, lesson_check)] * 20) as api:
        env = spawn_env(tool_env, api, tmp_path / "runs", FACTORY_CPUS="64", FACTORY_MEMORY="256g")
        issue = file_issue(repo, env)
        p = run_until_idle(repo, env)
    got = show(repo, env, issue["id"])
    assert got["state"] == "failed" and got["verdict"]["verdict"] == "refuse", got
    refusal = got["comments"][-1]["text"]
    assert refused_by in refusal and ("no-test-deletion.md" in refusal if refused_by == "prohibition"
                                      else "factory.yaml" in refusal)
    assert git(repo, "rev-parse", "main") == main_before          # main's code never changed
    lessons = [i for i in (json.loads(line) for line in
                           run_tool(["factory-issue", "list"], cwd=repo, env=env).stdout.splitlines())
               if i["source"].startswith("postmortem:")]
    assert len(lessons) == 1, p.stderr
    branch = lessons[0]["branch"]
    files = git(repo, "ls-tree", "-r", "--name-only", branch, "--", "intent/").split()
    assert any(f.startswith("intent/postmortems/") for f in files)
    lesson = git(repo, "show", f"{branch}:" + next(f for f in files if f.startswith("intent/prohibitions/")
                                                    and "no-test-deletion" not in f))
    assert lesson_check in lesson       # the model's check was kept: it fails on the head and passes on main
