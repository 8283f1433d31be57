"""factory-postmortem with a model, end to end: real Docker, the real anthropic SDK against
the scripted model, real git. The postmortem agent reads the refused head in a container
and proposes a lesson; a prohibition keeps its check only if the check fails on the head
and passes on the base (each run in a fresh container); an unusable answer gives a
factual postmortem; and an agent spawned once the lesson is on main reads it in its
system prompt, from the prompt cache on later turns."""

from __future__ import annotations

import json
import re

import pytest
from modelserver import ScriptedModel, text, tool_use
from postmortemkit import front_matter, read_on, repo_with_refused_branch, run_postmortem, verdict
from spawnkit import containers_of_run, file_issue, git, spawn, spawn_env, tool_results

pytestmark = pytest.mark.docker

GUARD = "! grep -n 'a - b' calc.py"   # fails on the refused head, passes on main


def report(kind="prohibition", check=GUARD, **over):
    r = {"title": "add() was turned into a subtraction",
         "what_was_tried": "The agent changed calc.py to take a third argument.",
         "what_failed": "test_calc.py failed: add(2, 3) gave -1.",
         "root_cause": "The agent rewrote add() and did not run the tests before handing the branch over.",
         "contributing_factors": ["The issue did not say that existing behaviour must stay."],
         "what_should_have_happened": "The agent should have run python3 -m unittest and seen it fail.",
         "lesson": {"kind": kind, "title": "add() adds", "text": "add() must add its arguments; never subtract.",
                    "check": check}}
    r.update(over)
    return r


@pytest.fixture
def refused(tmp_path, tool_env):
    return repo_with_refused_branch(tmp_path / "calc", tool_env)


def postmortem_with(refused, tool_env, tmp_path, script, v=None):
    repo, issue, base, head = refused
    v = v or verdict(repo, issue, base, head)
    with ScriptedModel(script) as api:
        code, outs, err = run_postmortem(repo, spawn_env(tool_env, api, tmp_path / "runs"), v)
    assert code == 0, err
    (out,) = outs
    return out, api, err


def test_a_prohibition_whose_check_fails_on_the_head_and_passes_on_the_base_is_kept(refused, tool_env, tmp_path):
    repo, issue, base, head = refused
    script = [tool_use("bash", {"command": "python3 -m unittest -q 2>&1 | tail -3; git log --oneline -3"}),
              tool_use("report_postmortem", report())]
    out, api, err = postmortem_with(refused, tool_env, tmp_path, script)

    assert out["factual"] is False and out["why_factual"] is None and out["notes"] == []
    assert out["lesson_kind"] == "prohibition" and out["check"] == GUARD
    assert out["lesson"].startswith("intent/prohibitions/add-adds-")
    meta, body = front_matter(read_on(repo, out["branch"], out["lesson"]))
    assert meta["check"] == GUARD and meta["factual"] is False and meta["fingerprint"] == out["fingerprint"]
    assert "add() must add its arguments" in body
    pm_meta, pm = front_matter(read_on(repo, out["branch"], out["postmortem"]))
    assert "did not run the tests" in pm and "- The issue did not say" in pm and "Written from" not in pm
    assert pm_meta["written_by"] == f"run {out['postmortem_run']}"

    # the agent saw the refused head, and the failure fenced as data; its run is recorded
    assert "FAILED" in tool_results(api)[0] and "an agent's change" in tool_results(api)[0]
    first = api.requests[0]
    message = first["messages"][0]["content"][0]["text"]
    (tag,) = set(re.findall(r"^<(untrusted-evidence-[0-9a-f]{16})>$", message, re.M))
    assert message.index(f"<{tag}>") < message.index("AssertionError") < message.index(f"</{tag}>")
    assert issue["title"] in message
    assert [t["name"] for t in first["tools"]][-1] == "report_postmortem"
    assert "You are the postmortem agent of factory" in first["system"][0]["text"]
    assert "Keep changes small." in first["system"][1]["text"], "main's intent layer"
    assert len(api.requests) == 2, "the run ends with the report: no turn is spent after it"
    run = json.loads(git(repo, "show", f"refs/factory/runs/{out['postmortem_run']}:run.json"))
    assert run["kind"] == "postmortem" and run["status"] == "ok" and run["postmortem"]["lesson"]["check"] == GUARD
    assert run["branch"] is None and run["commit"] is None, "a postmortem agent's work is never harvested"
    assert containers_of_run(out["postmortem_run"]) == []
    assert git(repo, "rev-parse", "main") == base


def test_a_check_that_passes_on_the_head_is_dropped_and_the_lesson_is_a_principle(refused, tool_env, tmp_path):
    repo, *_ = refused
    script = [tool_use("report_postmortem", report(check="true"))]
    out, _, err = postmortem_with(refused, tool_env, tmp_path, script)
    assert out["lesson_kind"] == "principle" and out["check"] is None and out["factual"] is False
    assert out["lesson"].startswith("intent/principles/")
    assert "passed on the failed head" in out["notes"][0] and "passed on the failed head" in err
    meta, _ = front_matter(read_on(repo, out["branch"], out["lesson"]))
    assert "check" not in meta
    assert "kept as a principle" in read_on(repo, out["branch"], out["postmortem"])


def test_a_check_that_fails_on_the_base_too_is_dropped(refused, tool_env, tmp_path):
    script = [tool_use("report_postmortem", report(check="false"))]
    out, _, _ = postmortem_with(refused, tool_env, tmp_path, script)
    assert out["lesson_kind"] == "principle" and "failed on the base" in out["notes"][0]


def test_an_unusable_answer_gives_a_factual_postmortem_marked_so(refused, tool_env, tmp_path):
    repo, *_ = refused
    broken = report()
    del broken["root_cause"]
    script = [tool_use("report_postmortem", broken), text("I could not work it out.")]
    out, api, err = postmortem_with(refused, tool_env, tmp_path, script)
    assert "root_cause: is missing" in tool_results(api)[0], "the model is told what was wrong"
    assert out["factual"] is True and "no usable postmortem" in out["why_factual"]
    assert "no usable postmortem" in err
    assert out["lesson_kind"] == "principle"
    meta, body = front_matter(read_on(repo, out["branch"], out["lesson"]))
    assert meta["factual"] is True and "python3 -m unittest -q" in body


def test_a_model_error_gives_a_factual_postmortem(refused, tool_env, tmp_path):
    from modelserver import error
    script = [error(400, "messages: bad")]
    out, _, err = postmortem_with(refused, tool_env, tmp_path, script)
    assert out["factual"] is True and "ended error" in out["why_factual"] and "bad_request" in out["why_factual"]


def test_an_agent_spawned_after_the_lesson_landed_reads_it_from_the_prompt_cache(refused, tool_env, tmp_path):
    repo, issue, base, head = refused
    out, _, _ = postmortem_with(refused, tool_env, tmp_path, [tool_use("report_postmortem", report())])
    from factory.gitstore import Repo
    Repo(repo).update_refs([("refs/heads/main", out["commit"], base)])  # the merge queue's move
    git(repo, "reset", "-q", "--hard")
    work = file_issue(repo, tool_env, title="add() should take floats too")
    script = [tool_use("bash", {"command": "true"}), text("done")]
    with ScriptedModel(script) as api:
        code, run, err = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), work)
    assert run is not None, err
    system = "".join(b["text"] for b in api.requests[0]["system"])
    assert "add() must add its arguments; never subtract." in system and f"check: {GUARD}" in system
    assert f'<file path="{out["lesson"]}">' in system and "did not run the tests" in system  # its postmortem too
    assert "recurrences_before" not in system and "evidence:" not in system, "front matter stays out of the prompt"
    assert [json.dumps(r["system"]) for r in api.requests] == [json.dumps(api.requests[0]["system"])] * 2
    assert api.usages[1]["cache_read_input_tokens"] > 0, api.usages
    assert run["usage"]["cache_read_input_tokens"] > 0
