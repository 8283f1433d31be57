"""factory-sense with model sources, end to end: real Docker, real git, the scripted model
as the agent. What a model reports is only believed once factory has re-run it: an
adversary's reproduction must fail on the target (else the finding is dropped and
counted), a failure a review branch did not bring is main's, a drift finding must quote
a line of the intent layer, and a model's malformed report is counted, not obeyed."""

from __future__ import annotations

import json

import pytest
from modelserver import ScriptedModel, text, tool_use
from spawnkit import git, sample_repo, spawn_env, tool_results

from conftest import run_tool

pytestmark = pytest.mark.docker

ADD_WORKS = "python3 -c 'from calc import add; assert add(2, 3) == 5'"      # fails: add subtracts
ADD_TAKES_INTS = "python3 -c 'from calc import add; assert add(1, 1) == 0'"  # passes: 1 - 1 == 0
SPEC_LINE = "- add(a, b) returns the sum of a and b."


def finding(title, fingerprint, **extra):
    return {"title": title, "body": f"{title}.", "severity": "high", "fingerprint": fingerprint, **extra}


def sense(repo, env, *args):
    p = run_tool(["factory-sense", *args], cwd=repo, env=env, timeout=600)
    return p, [json.loads(line) for line in p.stdout.splitlines()]


def all_issues(repo, env):
    p = run_tool(["factory-issue", "list", "--state", "open", "--state", "review", "--state", "closed"],
                 cwd=repo, env=env)
    return [json.loads(line) for line in p.stdout.splitlines()]


def record(repo, run_id):
    return json.loads(git(repo, "show", f"refs/factory/runs/{run_id}:run.json"))


def test_an_adversary_finding_is_filed_only_if_its_reproduction_fails(tmp_path, tool_env):
    repo = sample_repo(tmp_path / "repo")
    script = [tool_use("report_finding", finding("add() subtracts", "calc:add:subtracts", reproduction=ADD_WORKS)),
              tool_use("report_finding", finding("add() is wrong for ones", "calc:add:ones",
                                                 reproduction=ADD_TAKES_INTS)),
              text("Two findings.")]
    with ScriptedModel(script) as api:
        p, found = sense(repo, spawn_env(tool_env, api, tmp_path / "runs"), "redteam", "--file")
    assert p.returncode == 0, p.stderr
    assert [f["fingerprint"] for f in found] == ["redteam:calc:add:subtracts"]
    assert found[0]["source"] == "adversary:redteam" and found[0]["confirmed"]["exit_code"] == 1
    (issue,) = all_issues(repo, tool_env)
    assert issue["fingerprint"] == "redteam:calc:add:subtracts" and ADD_WORKS in issue["body"]
    rec = record(repo, found[0]["run"])
    assert rec["counts"]["dropped"] == 1 and rec["counts"]["filed"] == 1
    assert rec["dropped"][0]["fingerprint"] == "redteam:calc:add:ones"
    assert "exits 0 on main" in rec["dropped"][0]["why"]
    assert "dropped 1 unconfirmed" in p.stderr and "add() is wrong for ones" in p.stderr
    assert record(repo, f"{found[0]['run']}-agent")["kind"] == "adversary"  # the agent's own run


def test_on_a_review_branch_a_failure_the_branch_did_not_bring_is_mains(tmp_path, tool_env):
    repo = sample_repo(tmp_path / "repo")
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n")
    (repo / "factory.yaml").write_text("adversaries:\n  redteam:\n    target: review\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "mul")
    base = git(repo, "rev-parse", "main")
    issue = json.loads(run_tool(["factory-issue", "file"], cwd=repo, env=tool_env,
                                input='{"title": "speed up mul"}\n').stdout)
    branch = f"factory/{issue['id']}"
    git(repo, "checkout", "-qb", branch)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a + b\n")
    git(repo, "commit", "-qam", "mul, faster")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    assert run_tool(["factory-issue", "update", issue["id"], "--state", "review", "--branch", branch],
                    cwd=repo, env=tool_env).returncode == 0
    mul_works = "python3 -c 'from calc import mul; assert mul(2, 3) == 6'"  # passes on main, fails on the branch
    script = [tool_use("report_finding", finding("add() subtracts", "add", reproduction=ADD_WORKS)),
              tool_use("report_finding", finding("mul() adds", "mul", reproduction=mul_works)),
              text("Two findings.")]
    with ScriptedModel(script) as api:
        p, found = sense(repo, spawn_env(tool_env, api, tmp_path / "runs"), "redteam", "--file")
    assert p.returncode == 0, p.stderr
    by = {f["fingerprint"]: f for f in found}
    assert by["redteam:add"]["target"] == "main" and by["redteam:add"]["commit"] == base
    assert by["redteam:add"]["confirmed"]["base_exit_code"] == 1
    assert by["redteam:mul"]["target"] == branch and by["redteam:mul"]["commit"] == head
    assert by["redteam:mul"]["confirmed"]["base_exit_code"] == 0
    labels = {i["fingerprint"]: i["labels"] for i in all_issues(repo, tool_env) if i["fingerprint"]}
    assert "target:main" in labels["redteam:add"] and f"target:{branch}" in labels["redteam:mul"]
    assert api.requests and head in json.dumps(record(repo, f"{found[0]['run']}-agent")["base"])


SPECS = f"# Calc\n\n{SPEC_LINE}\n- sub(a, b) returns a minus b.\n"


def test_the_drift_sensor_files_a_spec_line_the_code_does_not_meet_and_drops_what_quotes_none(tmp_path, tool_env):
    repo = sample_repo(tmp_path / "repo")
    (repo / "intent" / "specs").mkdir()
    (repo / "intent" / "specs" / "calc.md").write_text(SPECS)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "specs")
    quoting = finding("add() subtracts", "specs/calc.md:add-sums",
                      body=f"intent/specs/calc.md:3 requires:\n> {SPEC_LINE}\n\ncalc.py:2 returns a - b instead.")
    unquoting = finding("calc should be faster", "specs/calc.md:speed",
                        body="The specs say calc must answer in a microsecond; it does not.")
    script = [tool_use("bash", {"command": "cat intent/specs/calc.md"}),
              tool_use("report_finding", quoting), tool_use("report_finding", unquoting), text("Two gaps.")]
    with ScriptedModel(script) as api:
        p, found = sense(repo, spawn_env(tool_env, api, tmp_path / "runs"), "drift", "--file")
    assert p.returncode == 0, p.stderr
    assert SPEC_LINE in tool_results(api)[0]                        # the model read the spec
    assert "intent/specs" in json.dumps(api.requests[0]["messages"][0])  # ... as the shipped drift prompt asks
    assert [f["fingerprint"] for f in found] == ["drift:specs/calc.md:add-sums"]
    (issue,) = all_issues(repo, tool_env)
    assert SPEC_LINE in issue["body"] and issue["source"] == "sensor:drift"
    rec = record(repo, found[0]["run"])
    assert rec["counts"]["dropped"] == 1 and rec["dropped"][0]["fingerprint"] == "drift:specs/calc.md:speed"
    assert "quotes no line of intent/specs/ or intent/principles/" in rec["dropped"][0]["why"]


def test_a_model_that_reports_malformed_findings_is_counted_and_the_rest_are_handled(tmp_path, tool_env):
    repo = sample_repo(tmp_path / "repo")
    script = [
        tool_use("report_finding", {"title": "no body, no severity", "fingerprint": "x"}),
        tool_use("report_finding", finding("a list for a command", "list", reproduction=["python3", "-c", "1/0"])),
        tool_use("report_finding", finding("an unknown severity", "sev", severity="urgent", reproduction=ADD_WORKS)),
        tool_use("report_finding", finding("a script left in the agent's container", "script",
                                           reproduction="./repro.sh")),
        tool_use("report_finding", finding("add() subtracts", "add", reproduction=ADD_WORKS)),
        text("Done."),
    ]
    with ScriptedModel(script) as api:
        p, found = sense(repo, spawn_env(tool_env, api, tmp_path / "runs"), "redteam", "--file")
    assert p.returncode == 0, p.stderr
    told = tool_results(api)
    assert "report_finding needs body, severity" in told[0]
    assert "`reproduction` must be a string" in told[1] and "`severity` must be one of" in told[2]
    assert [f["fingerprint"] for f in found] == ["redteam:add"]
    assert len(all_issues(repo, tool_env)) == 1
    rec = record(repo, found[0]["run"])
    assert rec["counts"]["invalid"] == 3, rec["counts"]
    assert rec["counts"]["dropped"] == 1 and "cannot run" in rec["dropped"][0]["why"]
    assert "3 invalid" in p.stderr


def test_an_agent_that_ends_in_error_still_has_its_findings_handled_and_the_run_says_so(tmp_path, tool_env):
    repo = sample_repo(tmp_path / "repo")
    script = [tool_use("report_finding", finding("add() subtracts", "add", reproduction=ADD_WORKS))]
    with ScriptedModel(script) as api:  # then the script runs out: the model API answers 500
        p, found = sense(repo, spawn_env(tool_env, api, tmp_path / "runs"), "redteam", "--file")
    assert p.returncode == 5, p.stderr
    assert "the agent on main ended error" in p.stderr and "script exhausted" in p.stderr
    assert [f["fingerprint"] for f in found] == ["redteam:add"] and len(all_issues(repo, tool_env)) == 1
    rec = record(repo, found[0]["run"])
    assert rec["status"] == "error" and "ended in error" in rec["reason"]
