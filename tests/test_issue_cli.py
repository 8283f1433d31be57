"""factory-issue as a user drives it: pipes, exit codes, and bad input that changes nothing."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import run_tool


def refs(repo):
    return subprocess.run(["git", "-C", str(repo), "for-each-ref"], capture_output=True, text=True).stdout


def jl(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def fi(args, repo, env, input=None):
    return run_tool(["factory-issue", *args], cwd=repo, env=env, input=input)


def test_file_list_show_next_claim_update_close(git_repo, tool_env):
    r = fi(["file"], git_repo, tool_env, input='{"title": "fix parser", "labels": ["bug"]}\n{"title": "docs", "priority": 4}\n')
    assert r.returncode == 0, r.stderr
    filed = jl(r.stdout)
    assert [i["title"] for i in filed] == ["fix parser", "docs"] and all(i["state"] == "open" for i in filed)
    listed = jl(fi(["list"], git_repo, tool_env).stdout)
    assert {i["id"] for i in listed} == {i["id"] for i in filed}
    bug = jl(fi(["list", "--where", '.labels | index("bug")'], git_repo, tool_env).stdout)
    assert [i["title"] for i in bug] == ["fix parser"]
    assert jl(fi(["list", "--label", "bug", "--state", "closed"], git_repo, tool_env).stdout) == []

    nxt = fi(["next"], git_repo, tool_env)
    assert nxt.returncode == 0 and jl(nxt.stdout)[0]["title"] == "fix parser"
    # `next | claim` composes
    claimed = fi(["claim", "--by", "worker:1"], git_repo, tool_env, input=nxt.stdout)
    assert claimed.returncode == 0 and jl(claimed.stdout)[0]["claimed_by"] == "worker:1"
    lost = fi(["claim", filed[0]["id"][:6]], git_repo, tool_env)
    assert lost.returncode == 1 and "claimed by worker:1" in lost.stderr

    up = fi(["update"], git_repo, tool_env, input=json.dumps({"id": filed[0]["id"], "state": "review",
                                                              "branch": "factory/" + filed[0]["id"]}) + "\n")
    assert up.returncode == 0 and jl(up.stdout)[0]["state"] == "review"
    assert fi(["close", filed[1]["id"], "--reason", "not needed"], git_repo, tool_env).returncode == 0
    none = fi(["next"], git_repo, tool_env)
    assert none.returncode == 1 and none.stdout == "" and "no ready issue" in none.stderr

    shown = jl(fi(["show", filed[1]["id"]], git_repo, tool_env).stdout)[0]
    assert shown["state"] == "closed" and shown["comments"][0]["text"] == "not needed"
    assert [e["type"] for e in shown["history"]] == ["filed", "comment", "set"]


def test_comment_from_stdin_and_pretty_list(git_repo, tool_env):
    (issue,) = jl(fi(["file"], git_repo, tool_env, input='{"title": "a"}\n').stdout)
    r = fi(["comment", issue["id"]], git_repo, tool_env, input="line one\nline two\n")
    assert r.returncode == 0 and jl(r.stdout)[0]["comments"][0]["text"] == "line one\nline two\n"
    pretty = fi(["list", "-p"], git_repo, tool_env).stdout
    assert issue["id"] in pretty and "open" in pretty and not pretty.startswith("{")


BAD_INPUTS = [
    ('{"title": "ok"}\nnot json at all\n', "line 2: not JSON"),
    ('{"body": "no title"}\n', "line 1: title: is missing"),
    ('{"title": 42}\n', "line 1: title: must be a string"),
    ('{"title": "x", "labels": "bug"}\n', "line 1: labels: must be a list"),
    ('{"title": "x", "priority": 9}\n', "line 1: priority: is 9"),
    ('{"title": "x", "state_typo": 1}\n', "line 1: state_typo: is not a field"),
    ('[1, 2]\n', "line 1: issue: must be a JSON object"),
    ('{"title": "x", "body": "' + "b" * (10 * 1024 * 1024) + '"}\n', "line 1: longer than"),
    ('{"title": "x", "body": "' + "b" * (300 * 1024) + '"}\n', "line 1: body: is 307200 bytes"),
]


@pytest.mark.parametrize("payload,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_refused_with_the_line_and_changes_nothing(git_repo, tool_env, payload, message):
    fi(["file"], git_repo, tool_env, input='{"title": "existing"}\n')
    before = refs(git_repo)
    r = fi(["file"], git_repo, tool_env, input=payload)
    assert r.returncode == 2
    assert message in r.stderr and "nothing was written" in r.stderr
    assert r.stdout == ""
    assert refs(git_repo) == before


def test_bad_patches_and_unknown_ids_change_nothing(git_repo, tool_env):
    (issue,) = jl(fi(["file"], git_repo, tool_env, input='{"title": "a"}\n').stdout)
    before = refs(git_repo)
    cases = [
        (["update", issue["id"], "--priority", "7"], "priority"),
        (["update", "abcdef123456", "--state", "done"], "no issue 'abcdef123456'"),
        (["close", issue["id"], "fffffffffff0"], "no issue"),
        (["claim", "not-hex"], "is not an issue id"),
        (["update", issue["id"]], "nothing to change"),
        (["list", "--where", ".labels |||"], "not a jq expression"),
    ]
    for args, message in cases:
        r = fi(args, git_repo, tool_env)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    patch = json.dumps({"id": issue["id"], "state": "review"}) + "\n" + json.dumps({"id": issue["id"], "colour": "red"}) + "\n"
    r = fi(["update"], git_repo, tool_env, input=patch)
    assert r.returncode == 2 and "line 2: colour" in r.stderr
    assert refs(git_repo) == before


def test_outside_a_repository_is_a_clear_usage_error(tmp_path, tool_env):
    r = fi(["list"], tmp_path, tool_env)
    assert r.returncode == 2 and "not a git repository" in r.stderr and "FACTORY_REPO" in r.stderr


def test_repo_option_and_env_pick_the_repository(git_repo, tmp_path, tool_env):
    fi(["file"], git_repo, tool_env, input='{"title": "elsewhere"}\n')
    r = fi(["list", "-C", str(git_repo)], tmp_path, tool_env)
    assert [i["title"] for i in jl(r.stdout)] == ["elsewhere"]
    env = dict(tool_env, FACTORY_REPO=str(git_repo))
    assert [i["title"] for i in jl(fi(["list"], tmp_path, env).stdout)] == ["elsewhere"]


def test_list_into_a_closed_pipe_is_not_an_error(git_repo, tool_env):
    lines = "".join(json.dumps({"title": f"n{k}"}) + "\n" for k in range(2000))
    fi(["file", "-q"], git_repo, tool_env, input=lines)
    p = subprocess.run("factory-issue list | head -1", shell=True, cwd=git_repo, env=tool_env,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "Traceback" not in p.stderr and len(p.stdout.splitlines()) == 1
