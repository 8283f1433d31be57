"""factory init, factory.yaml validation, and factory status."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import run_tool

from factory import config


def snapshot(root):
    out = {}
    for d, _, files in os.walk(root):
        if ".git" in d.split(os.sep):
            continue
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
    return out


def test_init_writes_config_and_intent_skeleton_and_is_idempotent(git_repo, tool_env):
    r = run_tool(["factory", "init", "--json"], cwd=git_repo, env=tool_env)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)["created"]
    assert "factory.yaml" in created
    for section in ("principles", "prohibitions", "postmortems", "specs"):
        assert (git_repo / "intent" / section).is_dir()
    assert config.load(str(git_repo)) == config.DEFAULTS
    before = snapshot(git_repo)
    again = run_tool(["factory", "init", "--json"], cwd=git_repo, env=tool_env)
    assert again.returncode == 0 and json.loads(again.stdout)["created"] == []
    assert snapshot(git_repo) == before, "a second init changed a file"
    # nothing committed behind the user's back
    import subprocess
    log = subprocess.run(["git", "-C", str(git_repo), "log", "--oneline"], capture_output=True, text=True).stdout
    assert len(log.splitlines()) == 1


def test_init_in_a_subdirectory_writes_at_the_top(git_repo, tool_env):
    sub = git_repo / "src" / "deep"
    sub.mkdir(parents=True)
    assert run_tool(["factory", "init"], cwd=sub, env=tool_env).returncode == 0
    assert (git_repo / "factory.yaml").exists() and not (sub / "factory.yaml").exists()


def test_init_refuses_outside_git_and_with_a_broken_config(tmp_path, git_repo, tool_env):
    r = run_tool(["factory", "init"], cwd=tmp_path, env=tool_env)
    assert r.returncode == 2 and "not a git repository" in r.stderr
    (git_repo / "factory.yaml").write_text("slots:\n  worker: 3\n  wrkers: 2\n")
    r = run_tool(["factory", "init"], cwd=git_repo, env=tool_env)
    assert r.returncode == 2 and "factory.yaml line 3: slots.wrkers: unknown key" in r.stderr
    assert not (git_repo / "intent").exists(), "nothing written when the config is refused"


def walk_keys(schema, prefix=""):
    for k, v in schema.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from walk_keys(v, path + ".")
        elif isinstance(v, config.Named):
            yield path
            yield from (f"{path}.NAME.{e}" for e in v.entry)
        else:
            yield path


def test_template_documents_every_key_and_parses_to_the_defaults():
    assert config.parse(config.TEMPLATE) == config.DEFAULTS
    assert yaml.safe_load(config.TEMPLATE) is not None
    for key in walk_keys(config.SCHEMA):
        leaf = key.split(".")[-1]
        assert f"{leaf}:" in config.TEMPLATE, f"factory.yaml template does not mention {key}"


BAD_CONFIGS = [
    ("slots:\n  total: 8\n  workers: 3\n", "line 3: slots.workers: unknown key"),
    ("slots:\n  worker: three\n", "line 2: slots.worker: must be a whole number"),
    ("slots:\n  worker: -1\n", "line 2: slots.worker: is -1; it must be at least 0"),
    ("slots:\n  total: 2\n  worker: 3\n", "slots.worker: is more than slots.total"),
    ("resources:\n  worker:\n    memory: lots\n", "line 3: resources.worker.memory: 'lots' is not a size"),
    ("resources:\n  worker:\n    cpus: 0\n", "line 3: resources.worker.cpus: is 0; it must be more than"),
    ("merge: sometimes\n", "line 1: merge: is 'sometimes'; it must be one of: manual, auto"),
    ("model:\n  name: [a, b]\n", "line 2: model.name: must be a single value"),
    ("budgets:\n  cost_usd: cheap\n", "line 2: budgets.cost_usd: must be a number"),
    ("sensors:\n  tests:\n    schedule: hourly\n    command: pytest\n", "line 3: sensors.tests.schedule: 'hourly' is not a cron"),
    ("sensors:\n  lint:\n    schedule: '@daily'\n", "sensors.lint: give exactly one of command or prompt"),
    ("sensors:\n  tests:\n    command: a\n    prompt: b\n", "sensors.tests: give at most one of command or prompt"),
    ("adversaries:\n  probe:\n    target: main\n", "adversaries.probe.prompt: is required"),
    ("sensors:\n  tests:\n    target: branch\n", "line 3: sensors.tests.target: is 'branch'"),
    ("peers:\n  lib:\n    trust: total\n    url: x\n", "line 3: peers.lib.trust: is 'total'"),
    ("version: 2\n", "line 1: version: is 2; it must be at most 1"),
    ("sandbox:\n  runtime: gVisor!\n", "line 2: sandbox.runtime: 'gVisor!' is not a runtime name"),
    ("sandbox:\n  runtime: [runsc]\n", "line 2: sandbox.runtime: must be a single value"),
    ("sandbox:\n  runtim: runsc\n", "line 2: sandbox.runtim: unknown key (known here: runtime)"),
    ("slots: {total: 8\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_config_names_the_key_and_line(text, message):
    with pytest.raises(config.ConfigError) as e:
        config.parse(text)
    assert message in str(e.value)


def test_partial_config_keeps_other_defaults():
    cfg = config.parse("slots:\n  worker: 1\nsensors:\n  tests:\n    command: pytest -q\n")
    assert cfg["slots"] == dict(config.DEFAULTS["slots"], worker=1)
    assert cfg["sensors"]["tests"]["schedule"] == "@hourly"
    assert cfg["budgets"] == config.DEFAULTS["budgets"]


def test_sandbox_runtime_defaults_to_runc_and_takes_any_engine_runtime_name():
    assert config.DEFAULTS["sandbox"]["runtime"] == "runc"
    for name in ("runsc", "crun", "io.containerd.runc.v2", "kata-runtime"):
        assert config.parse(f"sandbox:\n  runtime: {name}\n")["sandbox"]["runtime"] == name


@pytest.mark.docker
def test_status_reports_engine_config_and_issues(git_repo, tool_env):
    run_tool(["factory", "init"], cwd=git_repo, env=tool_env)
    run_tool(["factory-issue", "file"], cwd=git_repo, env=tool_env, input='{"title": "a"}\n{"title": "b"}\n')
    run_tool(["factory-issue", "next", "--claim"], cwd=git_repo, env=tool_env)
    r = run_tool(["factory", "status", "--json"], cwd=git_repo, env=tool_env)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(r.stdout)
    assert s["engine"]["ok"] is True and s["engine"]["version"]
    assert s["config"]["ok"] and s["issues"] == {"total": 2, "ready": 1, "by_state": {"open": 1, "claimed": 1},
                                                 "damaged": 0}
    human = run_tool(["factory", "status"], cwd=git_repo, env=tool_env).stdout
    assert "engine   docker" in human and "2 total, 1 ready" in human


def test_status_says_when_the_engine_is_down_or_the_config_broken(git_repo, tool_env):
    (git_repo / "factory.yaml").write_text("merge: never\n")
    env = dict(tool_env, DOCKER_HOST="unix:///nonexistent/docker.sock")
    r = run_tool(["factory", "status", "--json"], cwd=git_repo, env=env)
    assert r.returncode == 1
    s = json.loads(r.stdout)
    assert s["engine"]["ok"] is False and "no Docker engine answers" in s["engine"]["error"]
    assert s["config"]["ok"] is False and "merge" in s["config"]["errors"][0]
