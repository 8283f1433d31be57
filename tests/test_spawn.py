"""factory-spawn end to end: real Docker, the real anthropic SDK against the scripted
model, real git. The scripted model reads the bug, fixes it with the editor tool, runs
the tests with bash; the fix lands on factory/<id> and nothing else changes."""

from __future__ import annotations

import json
import os

import pytest
from modelserver import ScriptedModel, reply, text, tool_use
from spawnkit import (CANARY_KEY, containers_of_run, everything_recorded, file_issue, git, record_file,
                      sample_repo, spawn, spawn_env, tool_results)

pytestmark = pytest.mark.docker


@pytest.fixture
def repo(tmp_path):
    return sample_repo(tmp_path / "calc")


def test_worker_fixes_the_bug_on_its_branch_and_leaves_nothing_behind(repo, tmp_path, tool_env):
    issue = file_issue(repo, tool_env)
    main_before = git(repo, "rev-parse", "main")
    script = [
        reply(text("Let me run the tests."), tool_use("bash", {"command": "python3 -m unittest -q 2>&1 | tail -3"})),
        tool_use("str_replace_based_edit_tool", {"command": "view", "path": "/workspace/repo/calc.py"}),
        tool_use("str_replace_based_edit_tool", {"command": "str_replace", "path": "/workspace/repo/calc.py",
                                                 "old_str": "return a - b", "new_str": "return a + b"}),
        tool_use("bash", {"command": "python3 -m unittest -q 2>&1 | tail -1 && git add -A && git commit -qm 'Make add() add'"}),
        text("Fixed add(): it subtracted. The test passes now."),
    ]
    with ScriptedModel(script) as api:
        code, run, err = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), issue)
    assert code == 0, err
    assert run["status"] == "ok" and run["issue"] == issue["id"] and run["turns"] == 5
    results = tool_results(api)
    assert "FAILED" in results[0]                       # the model saw the failing test
    assert "return a - b" in results[1]                 # ... read the code
    assert "OK" in results[3]                           # ... and saw the tests pass after the fix

    branch = f"factory/{issue['id']}"
    assert run["branch"] == branch and git(repo, "rev-parse", branch) == run["commit"]
    assert git(repo, "show", f"{branch}:calc.py") == "def add(a, b):\n    return a + b"
    assert git(repo, "log", "-1", "--format=%s", branch) == "Make add() add"
    assert git(repo, "rev-parse", "main") == main_before, "main must not move"
    assert git(repo, "status", "--porcelain") == "", "the user's work tree is untouched"

    shown = json.loads(__import__("subprocess").run(["factory-issue", "show", issue["id"]], cwd=repo, env=tool_env,
                                                    capture_output=True, text=True).stdout)
    assert shown["state"] == "review" and shown["branch"] == branch and shown["runs"] == [run["run"]]

    recorded = json.loads(record_file(repo, run["run"], "run.json"))
    assert recorded["status"] == "ok" and recorded["commit"] == run["commit"]
    assert "Make add() add" in record_file(repo, run["run"], "transcript.json")
    assert sum(run["usage"].values()) > 0 and run["usage"]["output_tokens"] > 0 and run["cost_usd"] > 0

    assert containers_of_run(run["run"]) == [], "no container remains"
    assert os.listdir(tmp_path / "runs") == [], "no workspace remains"
    assert CANARY_KEY not in everything_recorded(repo, run["run"])
    assert CANARY_KEY not in err


def test_uncommitted_work_is_committed_for_the_agent(repo, tmp_path, tool_env):
    issue = file_issue(repo, tool_env)
    script = [
        tool_use("str_replace_based_edit_tool", {"command": "create", "path": "/workspace/repo/NOTES.md",
                                                 "file_text": "notes\n"}),
        text("Done."),
    ]
    with ScriptedModel(script) as api:
        code, run, err = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), issue)
    assert code == 0, err
    assert git(repo, "show", f"factory/{issue['id']}:NOTES.md") == "notes"
    assert "uncommitted" in git(repo, "log", "-1", "--format=%s", f"factory/{issue['id']}")


def test_system_prompt_is_the_intent_layer_and_is_cached_across_turns_and_agents(repo, tmp_path, tool_env):
    first, second = file_issue(repo, tool_env, title="one"), file_issue(repo, tool_env, title="two")
    script = [tool_use("bash", {"command": "true"}), tool_use("bash", {"command": "ls"}), text("done"),
              tool_use("bash", {"command": "true"}), text("done")]
    env = None
    with ScriptedModel(script) as api:
        env = spawn_env(tool_env, api, tmp_path / "runs")
        spawn(repo, env, first)
        spawn(repo, env, second)
    systems = [json.dumps(r["system"], sort_keys=True) for r in api.requests]
    assert len(set(systems)) == 1, "the system prompt is byte-identical across turns and agents"
    system_text = "".join(b["text"] for b in api.requests[0]["system"])
    assert "Run the tests before you commit." in system_text      # the repo's principle
    assert first["id"] not in system_text and "one" not in api.requests[0]["system"][-1]["text"]
    assert api.requests[0]["system"][-1]["cache_control"] == {"type": "ephemeral"}
    tools = [t.get("type") for t in api.requests[0]["tools"]]
    assert tools == ["bash_20250124", "text_editor_20250728"]
    # the first request writes the prefix; the second agent's first request reads it
    assert api.usages[0]["cache_creation_input_tokens"] > 0 and api.usages[0]["cache_read_input_tokens"] == 0
    assert api.usages[3]["cache_read_input_tokens"] > 0, api.usages


def test_a_sensor_reports_findings_and_changes_nothing(repo, tmp_path, tool_env):
    finding = {"title": "add() subtracts", "body": "calc.add(2, 3) == -1", "severity": "high",
               "fingerprint": "calc.py:add:subtracts"}
    script = [tool_use("bash", {"command": "python3 -c 'import calc; print(calc.add(2, 3))'"}),
              tool_use("report_finding", finding), text("One finding.")]
    task = {"kind": "sensor", "sensor": {"name": "spec", "prompt": "Check calc.py against its tests."}}
    refs_before = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads")
    with ScriptedModel(script) as api:
        code, run, err = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), task)
    assert code == 0, err
    assert run["status"] == "ok" and run["findings"] == [finding] and run["issue"] is None
    assert [t["name"] for t in api.requests[0]["tools"]][-1] == "report_finding"
    assert "Check calc.py against its tests." in json.dumps(api.requests[0]["messages"][0])
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/heads") == refs_before
    assert json.loads(record_file(repo, run["run"], "run.json"))["findings"] == [finding]


def test_an_adversary_finding_needs_a_reproduction(repo, tmp_path, tool_env):
    bare = {"title": "t", "body": "b", "severity": "low", "fingerprint": "f"}
    script = [tool_use("report_finding", bare),
              tool_use("report_finding", {**bare, "reproduction": "python3 test_calc.py"}), text("done")]
    task = {"kind": "adversary", "target": "main", "adversary": {"name": "fuzz", "prompt": "Break calc."}}
    with ScriptedModel(script) as api:
        code, run, err = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), task)
    assert code == 0, err
    assert run["findings"] == [{**bare, "reproduction": "python3 test_calc.py"}]
    assert "needs a `reproduction`" in tool_results(api)[0]


def test_a_model_that_uses_relative_paths_fixes_the_bug(repo, tmp_path, tool_env):
    """As Anthropic's own examples call the editor: `view` of `.`, then `calc.py`."""
    issue = file_issue(repo, tool_env)
    edit = "str_replace_based_edit_tool"
    script = [
        tool_use(edit, {"command": "view", "path": "."}),
        tool_use(edit, {"command": "view", "path": "calc.py"}),
        tool_use(edit, {"command": "str_replace", "path": "calc.py", "old_str": "return a - b",
                        "new_str": "return a + b"}),
        text("add() adds now."),
    ]
    with ScriptedModel(script) as api:
        code, run, err = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), issue)
    assert code == 0, err
    assert run["status"] == "ok" and run["turns"] == 4
    listing, view, edited = tool_results(api)
    assert "/workspace/repo/calc.py" in listing and "/workspace/repo/intent/principles/" in listing
    assert "/.git" not in listing
    assert view == "     1\tdef add(a, b):\n     2\t    return a - b"
    assert "     2\t    return a + b" in edited
    branch = f"factory/{issue['id']}"
    assert git(repo, "diff", "--stat", f"main..{branch}") == \
        "calc.py | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)"
    assert git(repo, "diff", f"main..{branch}").count("\n+    return a + b") == 1
