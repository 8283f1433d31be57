"""The merge queue (factory merge): main moves only to a tree tested as exactly that tree,
and a checked-out main only together with its clean work tree."""

from __future__ import annotations

import json

import pytest

from conftest import run_tool
from spawnkit import CALC, git
from test_gate import FIXED, in_review, repo, show  # noqa: F401 (repo is a fixture)

pytestmark = pytest.mark.docker


def merge(repo, env, issue_id):
    p = run_tool(["factory", "merge", "--json", issue_id], cwd=repo, env=env, timeout=300)
    return p, (json.loads(p.stdout) if p.stdout.strip() else None)


def test_a_passing_branch_lands_and_the_checked_out_main_shows_it(repo, tool_env):
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED})
    p, result = merge(repo, tool_env, issue_id)
    assert p.returncode == 0, p.stderr
    assert result["merged"] and result["verdict"]["verdict"] == "pass"
    assert git(repo, "rev-parse", "main") == result["commit"] == result["verdict"]["merge"]
    assert (repo / "calc.py").read_text() == FIXED          # the work tree shows the merged work
    assert git(repo, "status", "--porcelain") == ""          # and nothing looks changed
    issue = show(repo, tool_env, issue_id)
    assert issue["state"] == "done" and issue["verdict"]["verdict"] == "pass"
    assert "merged into refs/heads/main" in issue["comments"][-1]["text"]


def test_a_dirty_work_tree_makes_the_merge_wait_and_nothing_of_the_user_is_touched(repo, tool_env):
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED})
    main_before = git(repo, "rev-parse", "main")
    mine = CALC + "# my own edit, not committed\n"
    (repo / "calc.py").write_text(mine)
    p, result = merge(repo, tool_env, issue_id)
    assert p.returncode == 1 and not result["merged"]
    assert "uncommitted changes" in result["waiting"] and "waits" in p.stderr
    assert (repo / "calc.py").read_text() == mine and git(repo, "rev-parse", "main") == main_before
    assert show(repo, tool_env, issue_id)["state"] == "review"
    git(repo, "checkout", "--", "calc.py")                    # the user puts it back
    p, result = merge(repo, tool_env, issue_id)
    assert p.returncode == 0 and (repo / "calc.py").read_text() == FIXED
    assert git(repo, "status", "--porcelain") == ""


def test_when_main_moves_during_the_test_the_branch_is_tested_again(repo, tool_env, monkeypatch):
    """The swap of main fails when someone landed meanwhile: the merge is judged again on
    the new main, and what lands is exactly the second tested commit."""
    from factory import config, gate, mergequeue
    from factory.gitstore import Repo
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED})
    real, verdicts = gate.judge, []

    def judge(*args, **kwargs):
        verdicts.append(real(*args, **kwargs))
        if len(verdicts) == 1:  # a person lands something on main while the test runs
            (repo / "NOTES").write_text("meanwhile\n")
            git(repo, "add", "NOTES")
            git(repo, "commit", "-qm", "meanwhile on main")
        return verdicts[-1]

    monkeypatch.setattr(gate, "judge", judge)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("FACTORY_ACTOR", "human:test")
    r = Repo(str(repo))
    result = mergequeue.merge_issue(r, config.load(str(repo)), issue_id, actor="merge:test")
    assert result["merged"] and len(verdicts) == 2, (result, [v["reason"] for v in verdicts])
    first, second = verdicts
    assert first["base"] != second["base"] == git(repo, "rev-parse", "main^1")
    assert git(repo, "rev-parse", "main") == second["merge"] and second["verdict"] == "pass"
    assert git(repo, "rev-parse", "main^2") == second["head"]
    assert (repo / "NOTES").read_text() == "meanwhile\n" and (repo / "calc.py").read_text() == FIXED
    assert git(repo, "status", "--porcelain") == ""


def test_only_an_issue_in_review_can_be_merged(repo, tool_env):
    p, _ = merge(repo, tool_env, "0123456789ab")
    assert p.returncode == 2 and "nothing was merged" in p.stderr
    issue_id = json.loads(run_tool(["factory-issue", "file"], cwd=repo, env=tool_env,
                                   input='{"title": "open"}\n').stdout)["id"]
    p, _ = merge(repo, tool_env, issue_id)
    assert p.returncode == 2 and "only an issue in review" in p.stderr
