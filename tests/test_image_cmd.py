"""factory image build, and the recipe a repository's .devcontainer/ gives."""

from __future__ import annotations

import json

import pytest
from conftest import run_tool

from factory import config, images


def test_jsonc_comments_and_trailing_commas():
    text = '{\n // a comment\n "name": "a // b", /* block */\n "build": {"dockerfile": "Dockerfile",},\n}'
    assert images.parse_jsonc(text) == {"name": "a // b", "build": {"dockerfile": "Dockerfile"}}


def test_devcontainer_dockerfile_and_context(tmp_path):
    (tmp_path / ".devcontainer").mkdir()
    (tmp_path / ".devcontainer" / "devcontainer.json").write_text(
        '{"build": {"dockerfile": "Dockerfile", "context": ".."}}')
    (tmp_path / ".devcontainer" / "Dockerfile").write_text("FROM x\n")
    r = images.recipe_from_config(config.DEFAULTS, str(tmp_path))
    assert (r.dockerfile, r.context, r.source) == (".devcontainer/Dockerfile", ".", "devcontainer")
    plain = images.recipe_hash(images.Recipe(name="a", repo=str(tmp_path)))
    assert images.recipe_hash(r) != plain


def test_devcontainer_image_becomes_the_base(tmp_path):
    (tmp_path / ".devcontainer").mkdir()
    (tmp_path / ".devcontainer" / "devcontainer.json").write_text('{"image": "python:3.12-slim"}')
    r = images.recipe_from_config(config.DEFAULTS, str(tmp_path))
    assert r.base == "python:3.12-slim" and r.dockerfile is None


def test_factory_yaml_dockerfile_wins_over_devcontainer(tmp_path):
    (tmp_path / ".devcontainer").mkdir()
    (tmp_path / ".devcontainer" / "devcontainer.json").write_text('{"image": "python:3.12-slim"}')
    (tmp_path / "Dockerfile.agent").write_text("FROM y\n")
    cfg = config.parse("image:\n  dockerfile: Dockerfile.agent\n")
    r = images.recipe_from_config(cfg, str(tmp_path))
    assert r.dockerfile == "Dockerfile.agent" and r.source == "config" and r.base == "debian:bookworm-slim"


def test_devcontainer_that_escapes_the_repo_or_is_broken_is_refused(tmp_path):
    (tmp_path / ".devcontainer").mkdir()
    f = tmp_path / ".devcontainer" / "devcontainer.json"
    f.write_text('{"build": {"dockerfile": "../../etc/Dockerfile"}}')
    with pytest.raises(images.ImageError, match="outside the repository"):
        images.recipe_from_config(config.DEFAULTS, str(tmp_path))
    f.write_text('{"build": ')
    with pytest.raises(images.ImageError, match="cannot read"):
        images.recipe_from_config(config.DEFAULTS, str(tmp_path))


@pytest.mark.docker
def test_image_build_reuses_an_unchanged_recipe(git_repo, tool_env):
    first = run_tool(["factory", "image", "build", "--json"], cwd=git_repo, env=tool_env, timeout=600)
    assert first.returncode == 0, first.stderr
    again = run_tool(["factory", "image", "build", "--json"], cwd=git_repo, env=tool_env)
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["image"] == b["image"] and a["recipe"] == b["recipe"] and b["built"] is False
    assert b["image"].endswith(":" + b["recipe"][:12])


def test_image_build_refuses_a_bad_config(git_repo, tool_env):
    (git_repo / "factory.yaml").write_text("image:\n  packages: ['bash; rm -rf /']\n")
    r = run_tool(["factory", "image", "build"], cwd=git_repo, env=tool_env)
    assert r.returncode == 2 and "packages" in r.stderr
