"""What an agent can leave, and what it cannot: its disk is bounded and is not the host's,
its branch holds exactly the files it left (no cache, nothing its git configuration ran,
no secret), a run started twice lands once, and reaping never touches another
repository's containers. Each attack is the scripted model's own tool calls."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest
from modelserver import ScriptedModel, text
from spawnkit import bash, containers_of_run, file_issue, git, record_file, sample_repo, spawn, spawn_env

pytestmark = pytest.mark.docker


@pytest.fixture
def repo(tmp_path):
    return sample_repo(tmp_path / "calc")


def configure(repo, yaml_text):
    (repo / "factory.yaml").write_text(yaml_text)
    git(repo, "add", "factory.yaml")
    git(repo, "commit", "-qm", "config")


def run_script(repo, tmp_path, tool_env, script, issue=None):
    issue = issue or file_issue(repo, tool_env)
    with ScriptedModel(script) as api:
        code, run, err = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), issue)
    assert run is not None, err
    return issue, code, run, api, err


def results(api):
    from spawnkit import tool_results
    return tool_results(api)


def du(path) -> int:
    total = 0
    for top, _, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(top, n)).st_size
            except FileNotFoundError:
                pass
    return total


def test_a_disk_hog_stops_at_the_workspace_limit_and_takes_no_host_disk(repo, tmp_path, tool_env):
    configure(repo, "resources:\n  worker:\n    disk: 64m\n")
    seen = {}

    def measure_then_finish(body):
        seen["git"], seen["runs"] = du(repo / ".git"), du(tmp_path / "runs")
        return text("done")

    before = du(repo / ".git")
    script = [
        bash("fallocate -l 3G /workspace/big; echo rc=$?; head -c 200m /dev/zero > /workspace/repo/zeros; echo rc=$?; "
             "for i in $(seq 1 3000); do echo $i > /workspace/repo/f$i || break; done; df -m /workspace | tail -1"),
        measure_then_finish,
    ]
    issue, code, run, api, err = run_script(repo, tmp_path, tool_env, script)
    out = results(api)[0]
    assert out.count("No space left on device") >= 2 and "rc=0" not in out, out
    assert seen["git"] - before < 1 << 20 and seen["runs"] < 1 << 20, seen  # nothing landed on the host's disk
    assert containers_of_run(run["run"]) == []


def test_a_harvest_over_max_bytes_is_refused_with_that_reason(repo, tmp_path, tool_env):
    configure(repo, "harvest:\n  max_bytes: 1m\n")
    script = [bash("head -c 3000000 /dev/urandom > blob.bin && git add blob.bin && git commit -qm blob && echo ok"),
              text("done")]
    issue, code, run, api, err = run_script(repo, tmp_path, tool_env, script)
    assert code == 1 and run["status"] == "failed", run
    assert run["reason"].startswith("harvest refused: ") and "harvest.max_bytes" in run["reason"], run["reason"]
    assert git(repo, "rev-parse", "--verify", "-q", f"refs/heads/factory/{issue['id']}", check=False) == ""


def test_the_branch_holds_exactly_the_files_the_agent_left(repo, tmp_path, tool_env):
    """The agent plants everything git could run during the harvest (fsmonitor, hooks, a
    clean filter, a global config in HOME, an XDG config), each writing junk into the
    checkout; leaves caches; and stops with its work uncommitted."""
    junk = "date > /workspace/repo/junk-$RANDOM"
    plant = (
        f"git config core.fsmonitor '{junk}'; git config core.hooksPath .git/hooks; "
        "for h in pre-commit post-commit post-checkout reference-transaction post-index-change; do "
        f"printf '#!/bin/sh\\n{junk}\\n' > .git/hooks/$h; chmod +x .git/hooks/$h; done; "
        f"git config filter.evil.clean '{junk}; cat'; echo '* filter=evil' > .gitattributes; "
        f"printf '[core]\\n\\tfsmonitor = {junk}\\n[filter \"evil\"]\\n\\tclean = sh -c \"{junk}; cat\"\\n' > /tmp/.gitconfig; "
        "mkdir -p /tmp/git && cp /tmp/.gitconfig /tmp/git/config; "
        "mkdir -p __pycache__ .pytest_cache/v sub/__pycache__ && touch __pycache__/a.pyc sub/__pycache__/b.pyc "
        ".pytest_cache/v/x stray.pyc; echo 'def add(a, b):\n    return a + b' > calc.py; echo new > new.txt; "
        "ls junk-* 2>/dev/null | wc -l"
    )
    script = [bash(plant), text("done")]
    issue, code, run, api, err = run_script(repo, tmp_path, tool_env, script)
    assert results(api)[0].strip().endswith("0"), "planting ran nothing itself"
    assert code == 0, err
    branch = f"factory/{issue['id']}"
    files = set(git(repo, "ls-tree", "-r", "--name-only", branch).split())
    base = set(git(repo, "ls-tree", "-r", "--name-only", "main").split())
    assert files - base == {".gitattributes", "new.txt"}, files - base
    assert git(repo, "show", f"{branch}:calc.py") == "def add(a, b):\n    return a + b"  # no filter ran on it


def test_a_daemon_the_agent_left_cannot_reach_into_the_harvest(repo, tmp_path, tool_env):
    """A `setsid` daemon escapes each tool call's sweep; it waits for the harvest's git dir
    and plants an fsmonitor in it. The harvest stops it first, and the deadline's sleep
    (the container's life) survives that."""
    daemon = ("setsid bash -c 'while :; do for c in /tmp/.factory-harvest.*/git/config; do "
              "[ -f \"$c\" ] && printf \"[core]\\n\\tfsmonitor = touch /workspace/repo/pwned\\n\" >> \"$c\"; "
              "done; done' </dev/null >/dev/null 2>&1 & "
              "echo work > w.txt; sleep 0.2; ps -eo args | grep -c 'while :' ")
    issue, code, run, api, err = run_script(repo, tmp_path, tool_env, [bash(daemon), text("done")])
    assert int(results(api)[0].split()[-1]) >= 2, "the daemon outlived its tool call"
    assert code == 0, err
    files = set(git(repo, "ls-tree", "-r", "--name-only", f"factory/{issue['id']}").split())
    assert "w.txt" in files and "pwned" not in files


def test_a_secret_in_the_agents_work_never_reaches_a_ref(repo, tmp_path, tool_env):
    key = "AKIA" + "IOSFODNN7EXAMPLE"          # AWS's documented example key, in pieces
    token = "ghp_" + "x1Y2z3" * 6               # GitHub-shaped, made here
    script = [bash(f"echo 'AWS_KEY = \"{key}\"' > settings.py && git add settings.py && "
                   f"git commit -qm 'settings, token {token}' && echo committed"),
              text("done")]
    issue, code, run, api, err = run_script(repo, tmp_path, tool_env, script)
    assert "committed" in results(api)[0]
    assert code == 1 and run["status"] == "failed" and run["branch"] is None, run
    assert run["reason"].startswith("harvest refused: ") and "secret-shaped" in run["reason"], run["reason"]
    assert "settings.py:1" in run["reason"], run["reason"]
    assert key not in run["reason"] and token not in run["reason"]
    every_ref = git(repo, "log", "--all", "-p", "--format=%B")
    assert key not in every_ref and token not in every_ref
    assert git(repo, "rev-list", "--count", f"refs/factory/runs/{run['run']}") == "1", "the record keeps no work"
    assert key not in record_file(repo, run["run"], "transcript.json")


def test_a_run_started_twice_lands_once(repo, tmp_path, tool_env):
    """The same claimed issue piped into two factory-spawns: both run, one lands. The
    first model holds its agent back until the second agent is surely running too."""
    issue = file_issue(repo, tool_env)
    claimed = subprocess.run(["factory-issue", "next", "--claim", "--by", "supervisor:test"], cwd=repo,
                             env=tool_env, capture_output=True, text=True)
    assert claimed.returncode == 0, claimed.stderr
    handed = json.loads(claimed.stdout)
    assert handed["claim_token"]
    second_running = threading.Event()

    def first_waits(body):
        assert second_running.wait(120)
        return bash("echo one > who.txt && git add who.txt && git commit -qm one")

    def second_starts(body):
        second_running.set()
        return bash("echo two > who.txt && git add who.txt && git commit -qm two")

    outcomes = {}
    with ScriptedModel([first_waits, text("done")]) as a, ScriptedModel([second_starts, text("done")]) as b:
        def go(name, api):
            outcomes[name] = spawn(repo, spawn_env(tool_env, api, tmp_path / "runs"), handed)
        threads = [threading.Thread(target=go, args=(n, api)) for n, api in (("one", a), ("two", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    runs = {name: o[1] for name, o in outcomes.items()}
    landed = [n for n, r in runs.items() if r["landed"]]
    assert len(landed) == 1, runs
    lost = "one" if landed == ["two"] else "two"
    assert runs[lost]["status"] == "failed" and "claim was spent" in runs[lost]["reason"], runs[lost]
    assert git(repo, "show", f"factory/{issue['id']}:who.txt") == landed[0]
    history = subprocess.run(["factory-issue", "show", issue["id"]], cwd=repo, env=tool_env,
                             capture_output=True, text=True).stdout
    got = json.loads(history)
    assert got["state"] == "review" and sorted(got["runs"]) == sorted(r["run"] for r in runs.values())
    reviews = [e for e in got["history"] if e["type"] == "set" and e["fields"].get("state") == "review"]
    assert len(reviews) == 1


def test_reaping_leaves_another_repositorys_containers_alone(repo, tmp_path, tool_env):
    from factory import config, images, sandbox
    image = images.ensure_image(images.recipe_from_config(config.DEFAULTS), log=lambda m: None)
    theirs = sandbox.Sandbox.start(image, labels={"factory.repo": "/elsewhere/.git", "factory.owner_pid": str(2 ** 22 + 1),
                                                  "factory.run": "theirs-" + os.urandom(3).hex()},
                                   cpus=0.5, memory="64m", pids=16, tmp_size="8m", disk="8m", deadline_s=300)
    try:
        ours = sandbox.Sandbox.start(image, labels={"factory.repo": str(repo / ".git"),
                                                    "factory.owner_pid": str(2 ** 22 + 1),
                                                    "factory.run": "ours-" + os.urandom(3).hex()},
                                     cpus=0.5, memory="64m", pids=16, tmp_size="8m", disk="8m", deadline_s=300)
        issue, code, run, api, err = run_script(repo, tmp_path, tool_env, [text("nothing to do")])
        assert ours.state().status == "gone", "this repository's orphan was reaped"
        assert theirs.alive(), "another repository's container was touched"
    finally:
        theirs.remove()
