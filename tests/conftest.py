"""Shared fixtures: temp git repos, the tools on PATH, and the Docker engine check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")
sys.path.insert(0, os.path.join(ROOT, "lib"))


def _engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config, items):
    """Tests marked `docker` skip with a reason where no engine answers; under CI (CI set)
    an engine must answer, so a missing one fails them instead of hiding them."""
    if not any(item.get_closest_marker("docker") for item in items):
        return
    if _engine_answers():
        return
    if os.environ.get("CI"):
        raise pytest.UsageError("no Docker engine answers, and under CI one must (.ci/run starts one); "
                                "refusing to skip the Docker tests")
    skip = pytest.mark.skip(reason="no Docker engine answers (run scripts/ensure-docker)")
    for item in items:
        if item.get_closest_marker("docker"):
            item.add_marker(skip)


@pytest.fixture
def tool_env(tmp_path):
    """Environment for running the executables from this checkout."""
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["FACTORY_ACTOR"] = "human:test"
    env.pop("FACTORY_REPO", None)
    env.pop("FACTORY_CONFIG", None)
    return env


@pytest.fixture(scope="session")
def default_image():
    """The agent image of the default config, on the default engine (built once, kept):
    what a private engine (tests/privateengine.py) is given with load_image()."""
    from factory import config, images
    return images.ensure_image(images.recipe_from_config(config.DEFAULTS), log=lambda m: None)


@pytest.fixture
def git_repo(tmp_path):
    """An empty git repository with one commit on main."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    (repo / "README").write_text("demo\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "init"], check=True, env=env)
    return repo


def run_tool(args, *, cwd, env, input=None, timeout=60):
    """Run an executable from bin/; returns CompletedProcess with text output."""
    return subprocess.run(args, cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=timeout)


from normaluser import normal_user  # noqa: E402,F401 (a fixture: factory run as uid 1000)
