"""A run's host-only files: where they live (the repository's common git dir, shared by
its worktrees), and reaping what a dead spawn left, of this repository only."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from factory.gitstore import Repo
from factory.workspace import Workspace, live_owners, reap


@pytest.fixture
def repo(git_repo, monkeypatch):
    monkeypatch.delenv("FACTORY_RUNS_DIR", raising=False)
    return Repo(git_repo)


def _as_dead(ws):
    owner = os.path.join(ws.root, "owner.json")
    data = json.load(open(owner))
    data["pid"] = 2 ** 22 + 1  # above pid_max: no such process
    with open(owner, "w") as f:
        json.dump(data, f)


def test_runs_live_under_the_common_git_dir_whatever_the_worktree(repo, git_repo, tmp_path):
    ws = Workspace(repo, "run-1").create(issue="abc")
    assert ws.root == os.path.join(repo.common_dir, "factory", "runs", "run-1")
    subprocess.run(["git", "-C", str(git_repo), "worktree", "add", "-q", str(tmp_path / "wt")], check=True)
    other = Repo(tmp_path / "wt")
    assert other.git_dir != repo.git_dir and other.common_dir == repo.common_dir
    assert [o["run"] for o in live_owners(other)] == ["run-1"]


def test_reap_removes_runs_of_dead_spawns_only(repo):
    alive = Workspace(repo, "run-alive").create()
    dead = Workspace(repo, "run-dead").create()
    _as_dead(dead)
    assert reap(repo) == ["run-dead"]
    assert os.path.isdir(alive.root) and not os.path.exists(dead.root)


def test_reap_leaves_another_repositorys_runs_alone(repo, tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path / "other")], check=True)
    other = Repo(tmp_path / "other")
    theirs = Workspace(other, "run-theirs").create()
    _as_dead(theirs)
    assert reap(repo) == []
    assert os.path.isdir(theirs.root)
    assert reap(other) == ["run-theirs"]
