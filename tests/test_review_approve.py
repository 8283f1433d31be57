"""factory review and factory approve as a person uses them: what waits in review, and an
approval that holds for one head of a branch."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import run_tool


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def refs(repo) -> str:
    return git(repo, "for-each-ref")


def factory(repo, env, *args, input=None):
    return run_tool(["factory", *args], cwd=repo, env=env, input=input)


def file_issue(repo, env, title="fix the parser") -> str:
    r = run_tool(["factory-issue", "file"], cwd=repo, env=env, input=json.dumps({"title": title}) + "\n")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["id"]


def work(repo, branch, path, text) -> str:
    """A commit on `branch` (made if need be) writing path; the work tree goes back to main."""
    exists = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
                            capture_output=True).returncode == 0
    git(repo, "checkout", "-q", *([] if exists else ["-b"]), branch)
    (repo / path).write_text(text)
    git(repo, "add", path)
    git(repo, "commit", "-qm", f"work on {path}")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return head


def to_review(repo, env, issue_id) -> str:
    """The issue in review with a branch factory/<id> holding one commit; returns its head."""
    head = work(repo, f"factory/{issue_id}", "feature.txt", "the work\n")
    patch = {"id": issue_id, "state": "review", "branch": f"factory/{issue_id}"}
    r = run_tool(["factory-issue", "update"], cwd=repo, env=env, input=json.dumps(patch) + "\n")
    assert r.returncode == 0, r.stderr
    return head


def show(repo, env, issue_id) -> dict:
    r = run_tool(["factory-issue", "show", issue_id], cwd=repo, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# -- approve ----------------------------------------------------------------------------------

def test_approve_before_any_work_records_no_head(git_repo, tool_env):
    issue_id = file_issue(git_repo, tool_env)
    r = factory(git_repo, tool_env, "approve", issue_id[:6])
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["id"] == issue_id
    assert printed["approved"]["by"] == "human:test" and printed["approved"]["head"] is None
    assert printed["comments"][-1]["text"] == "approved by human:test before any work"
    assert show(git_repo, tool_env, issue_id)["approved"] == printed["approved"]


def test_approve_holds_for_the_head_and_approving_again_moves_it(git_repo, tool_env):
    issue_id = file_issue(git_repo, tool_env)
    head = to_review(git_repo, tool_env, issue_id)
    r = factory(git_repo, tool_env, "approve", issue_id, "--note", "read every line")
    assert r.returncode == 0, r.stderr
    issue = show(git_repo, tool_env, issue_id)
    assert issue["approved"]["head"] == head and issue["approved"]["by"] == "human:test"
    assert issue["comments"][-1]["text"] == f"approved by human:test at head {head}\n\nread every line"
    # the field and the comment are one change: two events, side by side, at its end
    assert [e["type"] for e in issue["history"][-2:]] == ["set", "comment"]
    assert issue["history"][-2]["fields"] == {"approved": issue["approved"]}

    newer = work(git_repo, f"factory/{issue_id}", "feature.txt", "more work\n")
    listed = json.loads(factory(git_repo, tool_env, "review", "--json").stdout)
    assert listed["head"] == newer and listed["approved"] is False  # approval was for the old head
    assert factory(git_repo, tool_env, "approve", issue_id).returncode == 0
    assert show(git_repo, tool_env, issue_id)["approved"]["head"] == newer
    assert json.loads(factory(git_repo, tool_env, "review", "--json").stdout)["approved"] is True


@pytest.mark.parametrize("given,code,message", [
    ("0123456789ab", 2, "no issue '0123456789ab'"),
    ("not-an-id", 2, "is not an issue id"),
])
def test_approve_refuses_an_unknown_id_and_writes_nothing(git_repo, tool_env, given, code, message):
    file_issue(git_repo, tool_env)
    before = refs(git_repo)
    r = factory(git_repo, tool_env, "approve", given)
    assert r.returncode == code and message in r.stderr, r.stderr
    assert r.stdout == "" and refs(git_repo) == before


@pytest.mark.parametrize("state", ["done", "closed", "failed"])
def test_approve_refuses_a_finished_issue_and_writes_nothing(git_repo, tool_env, state):
    issue_id = file_issue(git_repo, tool_env)
    r = run_tool(["factory-issue", "update", issue_id, "--state", state], cwd=git_repo, env=tool_env)
    assert r.returncode == 0, r.stderr
    before = refs(git_repo)
    r = factory(git_repo, tool_env, "approve", issue_id)
    assert r.returncode == 1 and f"is {state}" in r.stderr and "nothing was written" in r.stderr, r.stderr
    assert r.stdout == "" and refs(git_repo) == before
    assert "approved" not in show(git_repo, tool_env, issue_id)


def test_approve_refuses_a_missing_branch_and_an_empty_note(git_repo, tool_env):
    issue_id = file_issue(git_repo, tool_env)
    to_review(git_repo, tool_env, issue_id)
    r = factory(git_repo, tool_env, "approve", issue_id, "--note", "")
    assert r.returncode == 2 and "--note" in r.stderr, r.stderr
    git(git_repo, "branch", "-D", f"factory/{issue_id}")
    before = refs(git_repo)
    r = factory(git_repo, tool_env, "approve", issue_id)
    assert r.returncode == 1 and f"factory/{issue_id}, which does not exist" in r.stderr, r.stderr
    assert refs(git_repo) == before


# -- review -------------------------------------------------------------------------------------

def test_review_with_nothing_in_review_says_so(git_repo, tool_env):
    file_issue(git_repo, tool_env)  # open, not in review
    for args in (["review"], ["review", "--json"]):
        r = factory(git_repo, tool_env, *args)
        assert r.returncode == 0 and r.stdout == "" and "no issue is in review" in r.stderr, (args, r.stderr)


def test_review_shows_the_branch_against_where_it_left_the_default_branch(git_repo, tool_env):
    waiting = file_issue(git_repo, tool_env, "add a feature")
    file_issue(git_repo, tool_env, "still open")
    head = to_review(git_repo, tool_env, waiting)
    work(git_repo, "main", "later-on-main.txt", "main moved on\n")  # not the branch's change
    base = git(git_repo, "merge-base", "main", head)
    expected = git(git_repo, "diff", "--stat", base, head)

    r = factory(git_repo, tool_env, "review", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert row["id"] == waiting and row["title"] == "add a feature" and row["branch"] == f"factory/{waiting}"
    assert row["head"] == head and row["base"] == "refs/heads/main" and row["merge_base"] == base
    assert row["verdict"] is None and row["judged"] is False and row["approved"] is False
    assert row["diffstat"].strip() == expected and "feature.txt" in expected
    assert "later-on-main.txt" not in row["diffstat"]

    r = factory(git_repo, tool_env, "review")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert waiting in out and "add a feature" in out and f"factory/{waiting} at {head[:12]}" in out
    assert "not judged yet" in out and "approved  no" in out and "feature.txt" in out
    assert "still open" not in out
    assert out.rstrip().splitlines()[-1].startswith("factory merge ID merges one")


def test_review_shows_the_verdict_only_for_the_head_it_judged(git_repo, tool_env):
    from factory.gitstore import Repo
    from factory.issues import IssueStore, make_event
    issue_id = file_issue(git_repo, tool_env)
    head = to_review(git_repo, tool_env, issue_id)
    verdict = {"verdict": "pass", "head": head, "base": git(git_repo, "rev-parse", "main"), "fingerprint": None,
               "record": None, "at": "2026-01-31T12:00:00.000000Z", "summary": "all checks pass",
               "needs_approval": True}
    # as factory-gate records its verdict
    IssueStore(Repo(git_repo)).change(
        issue_id, lambda issue, last: [make_event("set", "gate:test", after=last, fields={"verdict": verdict})])

    row = json.loads(factory(git_repo, tool_env, "review", "--json").stdout)
    assert row["verdict"] == verdict and row["judged"] is True
    out = factory(git_repo, tool_env, "review").stdout
    assert "pass: all checks pass" in out and "needs a person's approval" in out

    work(git_repo, f"factory/{issue_id}", "feature.txt", "changed after the verdict\n")
    row = json.loads(factory(git_repo, tool_env, "review", "--json").stdout)
    assert row["verdict"] == verdict and row["judged"] is False
    out = factory(git_repo, tool_env, "review").stdout
    assert "not judged yet" in out and "pass: all checks pass" not in out
