"""factory-sense: the parsers (no Docker), and the tests sensor on a real repository in
real containers: one issue per failing test, once; a pipe into factory-issue; verified
fixed after the fix merges; a regression once when it comes back."""

from __future__ import annotations

import json

import pytest

from conftest import run_tool
from spawnkit import CALC, git, sample_repo

from factory import sensors

FIXED = "def add(a, b):\n    return a + b\n"

PYTEST_OUT = """\
..F.E
=========================== short test summary info ============================
FAILED tests/test_calc.py::T::test_add - AssertionError: -1 != 5
ERROR tests/test_io.py::test_read - FileNotFoundError: x
FAILED tests/test_calc.py::T::test_add - AssertionError: -1 != 5
2 failed, 3 passed in 0.1s
"""

UNITTEST_OUT = """\
test_add (test_calc.T.test_add) ... FAIL
test_sub (test_calc.T) ... ERROR

======================================================================
FAIL: test_add (test_calc.T.test_add)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/workspace/repo/test_calc.py", line 7, in test_add
    self.assertEqual(add(2, 3), 5)
AssertionError: -1 != 5

======================================================================
ERROR: test_sub (test_calc.T)
----------------------------------------------------------------------
NameError: name 'sub' is not defined

----------------------------------------------------------------------
Ran 2 tests in 0.001s

FAILED (failures=1, errors=1)
"""


def test_pytest_summary_lines_give_one_finding_per_test():
    found, covered = sensors.findings_from_tests(PYTEST_OUT, 1)
    assert covered
    assert [f["fingerprint"] for f in found] == ["test:tests/test_calc.py::T::test_add", "test:tests/test_io.py::test_read"]
    assert "AssertionError: -1 != 5" in found[0]["title"]


def test_unittest_blocks_give_one_finding_per_test_with_its_traceback():
    found, covered = sensors.findings_from_tests(UNITTEST_OUT, 1)
    assert covered
    assert [f["fingerprint"] for f in found] == ["test:test_calc.T.test_add", "test:test_calc.T.test_sub"]
    assert "self.assertEqual(add(2, 3), 5)" in found[0]["evidence"] and "AssertionError: -1 != 5" in found[0]["title"]
    assert "NameError" in found[1]["title"]
    assert sensors.failing_tests("Ran 1 test\n\nFAILED (failures=1)\n") == []  # unittest's verdict line is no test


def test_a_failure_no_parser_can_read_is_one_finding_for_the_suite_and_covers_nothing():
    found, covered = sensors.findings_from_tests("segfault\n", 139)
    assert [f["fingerprint"] for f in found] == ["test:suite"] and not covered
    assert sensors.findings_from_tests("all good", 0) == ([], True)
    assert sensors.findings_from_tests("", None) == ([], False)  # timed out: nothing known


def test_a_map_turns_json_or_lines_into_findings():
    out = sensors.findings_from_map("lint", '.[] | {title: .msg, fingerprint: ("lint:" + .code)}',
                                    '[{"msg": "unused x", "code": "F401"}]')
    assert out == [{"title": "unused x", "fingerprint": "lint:F401", "severity": "medium"}]
    lines = sensors.findings_from_map("todo", 'select(test("TODO")) | {title: .}', "a\nTODO: b\n")
    assert lines[0]["title"] == "TODO: b" and lines[0]["fingerprint"].startswith("todo:")
    with pytest.raises(sensors.SensorError, match="not an object"):
        sensors.findings_from_map("x", ".", "1")
    with pytest.raises(sensors.SensorError, match="jq failed"):
        sensors.findings_from_map("x", "{{{", "1")


def test_an_unknown_name_is_refused_and_nothing_runs(git_repo, tool_env):
    p = run_tool(["factory-sense", "nosuch"], cwd=git_repo, env=tool_env)
    assert p.returncode == 2 and "no sensor or adversary named 'nosuch'" in p.stderr and "tests" in p.stderr
    assert git(git_repo, "for-each-ref", "refs/factory/") == ""


def test_nothing_enabled_says_how_to_enable_one(git_repo, tool_env):
    p = run_tool(["factory-sense"], cwd=git_repo, env=tool_env)
    assert p.returncode == 0 and p.stdout == "" and "sensors: {tests: {}}" in p.stderr


docker = pytest.mark.docker


def sense(repo, env, *args):
    p = run_tool(["factory-sense", *args], cwd=repo, env=env, timeout=300)
    return p, [json.loads(line) for line in p.stdout.splitlines()]


def issues(repo, env):
    p = run_tool(["factory-issue", "list", "--state", "open", "--state", "claimed", "--state", "review",
                  "--state", "done", "--state", "failed", "--state", "closed"], cwd=repo, env=env)
    return [json.loads(line) for line in p.stdout.splitlines()]


def record(repo, run_id):
    return json.loads(git(repo, "show", f"refs/factory/runs/{run_id}:run.json"))


@docker
def test_the_tests_sensor_files_once_verifies_the_fix_and_sees_the_regression(tmp_path, tool_env):
    repo = sample_repo(tmp_path / "repo")
    # -- a failing test: one issue naming it
    p, (finding,) = sense(repo, tool_env, "tests", "--file")
    assert p.returncode == 0, p.stderr
    assert finding["fingerprint"] == "test:test_calc.T.test_add" and finding["source"] == "sensor:tests"
    assert finding["target"] == "main" and finding["commit"] == git(repo, "rev-parse", "main")
    (issue,) = issues(repo, tool_env)
    assert "test_calc.T.test_add" in issue["title"] and issue["state"] == "open"
    assert "AssertionError" in issue["body"]
    rec = record(repo, finding["run"])
    assert rec["counts"]["filed"] == 1 and rec["kind"] == "sensor"
    # -- again: nothing new
    p, _ = sense(repo, tool_env, "tests", "--file")
    assert p.returncode == 0 and len(issues(repo, tool_env)) == 1
    assert "0 (0 regressions), 1 duplicates" in p.stderr
    # -- the pipe
    p = run_tool(["bash", "-c", "factory-sense tests | factory-issue file --dedupe | jq -r .id"], cwd=repo,
                 env=tool_env, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == issue["id"], p.stderr
    # -- a worker's fix merges through the gate and the merge queue: the next run verifies it
    branch = f"factory/{issue['id']}"
    git(repo, "checkout", "-qb", branch)
    (repo / "calc.py").write_text(FIXED)
    git(repo, "commit", "-qam", "fix add")
    git(repo, "checkout", "-q", "main")
    assert run_tool(["factory-issue", "update", issue["id"], "--state", "review", "--branch", branch],
                    cwd=repo, env=tool_env).returncode == 0
    merged = run_tool(["factory", "merge", issue["id"]], cwd=repo, env=tool_env, timeout=300)
    assert merged.returncode == 0, merged.stderr
    assert (repo / "calc.py").read_text() == FIXED and issues(repo, tool_env)[0]["state"] == "done"
    p, found = sense(repo, tool_env, "tests", "--file")
    assert p.returncode == 0 and found == [], p.stderr
    (closed,) = issues(repo, tool_env)
    assert closed["state"] == "closed" and "verified-fixed" in closed["labels"]
    assert any("verified fixed: run" in c["text"] for c in closed["comments"])
    # -- it comes back: a regression, once, linked to the old issue
    (repo / "calc.py").write_text(CALC)
    git(repo, "commit", "-qam", "break add again")
    for _ in range(2):
        p, _ = sense(repo, tool_env, "tests", "--file")
        assert p.returncode == 0, p.stderr
    new = [i for i in issues(repo, tool_env) if i["id"] != issue["id"]]
    assert len(new) == 1 and "regression" in new[0]["labels"]
    assert f"Regression of issue {issue['id']}" in new[0]["body"]
