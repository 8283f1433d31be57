"""Agent image recipes: the hash (what makes a rebuild), the offline rootfs steps, the
auto fallback; and against the real engine, build once, keep, never rebuild an
unchanged recipe, and the repo's own Dockerfile path."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading

import pytest

from factory import config, images, sandbox

# Shared with test_sandbox.py: same recipe, same hash, so only the first session builds.
TEST_RECIPE = images.Recipe(name="factory-test-agent", base=config.DEFAULTS["image"]["base"],
                            packages=tuple(config.DEFAULTS["image"]["packages"]), build="auto")


@pytest.fixture(scope="session")
def agent_image():
    """Build once, keep: the image stays after the session (a rebuild costs ~40 s);
    the recipe hash makes the next session's call a lookup."""
    return images.ensure_image(TEST_RECIPE)


@pytest.fixture
def repo_dir():
    d = tempfile.mkdtemp(prefix="factory-test-repo-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- the recipe and its hash -----------------------------------------------------------

def test_hash_changes_with_packages_and_base_but_not_order_name_or_mode():
    h = images.recipe_hash(TEST_RECIPE)
    assert len(h) == 64
    more = images.Recipe(name="factory-test-agent", packages=TEST_RECIPE.packages + ("make",))
    assert images.recipe_hash(more) != h
    same = images.Recipe(name="other-name", base=TEST_RECIPE.base, build="offline",
                         packages=tuple(reversed(TEST_RECIPE.packages)) + ("git",))
    assert images.recipe_hash(same) == h, "order, duplicates, name and build mode are not content"
    other_base = images.Recipe(name="x", base="python:3.12-slim", packages=TEST_RECIPE.packages)
    assert images.recipe_hash(other_base) != h


def test_agent_packages_are_always_included():
    r = images.Recipe(name="x", packages=("make",))
    assert set(images.all_packages(r)) >= {"bash", "git", "ca-certificates", "coreutils", "procps", "make"}
    # asking for what agents get anyway changes nothing
    assert images.recipe_hash(images.Recipe(name="x", packages=("bash",))) == \
        images.recipe_hash(images.Recipe(name="x", packages=()))


def test_hash_follows_the_dockerfile_content(repo_dir):
    path = os.path.join(repo_dir, "Dockerfile")
    with open(path, "w") as f:
        f.write("FROM debian:bookworm-slim\n")
    r = images.Recipe(name="x", dockerfile="Dockerfile", repo=repo_dir)
    h1 = images.recipe_hash(r)
    with open(path, "a") as f:
        f.write("RUN true\n")
    assert images.recipe_hash(r) != h1
    assert images.recipe_hash(images.Recipe(name="x")) != h1


def test_missing_dockerfile_is_an_error_that_names_it(repo_dir):
    r = images.Recipe(name="x", dockerfile="nope/Dockerfile", repo=repo_dir)
    with pytest.raises(images.ImageError, match="nope/Dockerfile"):
        images.recipe_hash(r)


def test_recipe_from_config_and_bad_packages():
    cfg = config.parse("image:\n  name: myimg:dev\n  packages: [git, make]\n")
    r = images.recipe_from_config(cfg, "/some/repo")
    assert (r.name, r.packages, r.build, r.repo) == ("myimg:dev", ("git", "make"), "auto", "/some/repo")
    assert images.image_tag(r).startswith("myimg:") and len(images.image_tag(r)) == len("myimg:") + 12
    assert images.split_name("myimg:dev") == ("myimg", "dev")
    assert images.split_name("localhost:5000/img") == ("localhost:5000/img", "latest")
    bad = config.parse("image:\n  packages: ['git; rm -rf /']\n")
    with pytest.raises(images.ImageError, match="not a Debian package name"):
        images.recipe_from_config(bad)


def test_generated_dockerfile_and_import_changes_set_user_workdir_home():
    digest = images.recipe_hash(TEST_RECIPE)
    df = images.generated_dockerfile(TEST_RECIPE)
    assert df.startswith(f"FROM {TEST_RECIPE.base}\n")
    assert "--no-install-recommends" in df and " procps" in df and " python3" in df
    assert "USER 1000:1000" in df and "ENV HOME=/tmp" in df and "WORKDIR /workspace" in df
    changes = images.import_changes(digest)
    assert "USER 1000:1000" in changes and "WORKDIR /workspace" in changes and "ENV HOME=/tmp" in changes
    assert f"LABEL factory.recipe={digest}" in changes


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to 1000 needs root")
def test_add_agent_user_writes_the_rootfs_files(repo_dir):
    root = repo_dir
    os.makedirs(os.path.join(root, "etc"))
    for name, text in (("passwd", "root:x:0:0:root:/root:/bin/bash\n"), ("group", "root:x:0:\n"),
                       ("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        with open(os.path.join(root, "etc", name), "w") as f:
            f.write(text)
    images.add_agent_user(root)
    images.add_agent_user(root)  # idempotent
    with open(os.path.join(root, "etc/passwd")) as f:
        lines = f.read().splitlines()
    assert lines == ["root:x:0:0:root:/root:/bin/bash",
                     "agent:x:1000:1000:factory agent:/home/agent:/bin/bash"]
    with open(os.path.join(root, "etc/group")) as f:
        assert f.read().splitlines()[-1] == "agent:x:1000:"
    for rel in ("home/agent", "workspace"):
        st = os.stat(os.path.join(root, rel))
        assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_remove_tree_removes_a_rootfs_like_tree(repo_dir):
    d = os.path.join(repo_dir, "build")
    os.makedirs(os.path.join(d, "rootfs/usr/bin"))
    os.symlink("/etc/passwd", os.path.join(d, "rootfs/usr/bin/link"))
    os.chmod(os.path.join(d, "rootfs/usr"), 0o500)
    images.remove_tree(d)
    assert not os.path.exists(d)
    assert os.path.exists("/etc/passwd"), "a symlink's target is not followed"


def test_auto_falls_back_to_offline_when_the_base_cannot_be_pulled(monkeypatch):
    calls = []
    monkeypatch.setattr(sandbox, "image_info", lambda ref: None)

    def no_pull(ref):
        raise sandbox.SandboxError("no registry")
    monkeypatch.setattr(sandbox, "pull_image", no_pull)
    monkeypatch.setattr(images, "build_offline", lambda r, d, log: calls.append("offline") or "sha256:off")
    monkeypatch.setattr(images, "build_registry", lambda *a, **k: calls.append("registry") or "sha256:reg")
    assert images.build(TEST_RECIPE, log=lambda m: None) == "sha256:off"
    assert calls == ["offline"]
    monkeypatch.setattr(sandbox, "pull_image", lambda ref: None)
    assert images.build(TEST_RECIPE, log=lambda m: None) == "sha256:reg"
    assert calls == ["offline", "registry"]


def test_registry_build_without_a_base_fails_fast_and_says_so(monkeypatch):
    monkeypatch.setattr(sandbox, "image_info", lambda ref: None)

    def no_pull(ref):
        raise sandbox.SandboxError("no registry")
    monkeypatch.setattr(sandbox, "pull_image", no_pull)
    r = images.Recipe(name="x", build="registry")
    with pytest.raises(images.ImageError, match="cannot pull base image 'debian:bookworm-slim'"):
        images.build(r, log=lambda m: None)


# -- the real engine -------------------------------------------------------------------

@pytest.mark.docker
def test_image_is_built_with_label_tags_user_and_env(agent_image):
    digest = images.recipe_hash(TEST_RECIPE)
    assert agent_image == f"factory-test-agent:{digest[:12]}"
    info = sandbox.image_info(agent_image)
    assert info["labels"]["factory.recipe"] == digest
    assert "factory-test-agent:latest" in info["tags"]
    attrs = sandbox.client().api.inspect_image(agent_image)["Config"]
    assert attrs["User"] == "1000:1000"
    assert attrs["WorkingDir"] == "/workspace"
    assert "HOME=/tmp" in attrs["Env"]


@pytest.mark.docker
def test_unchanged_recipe_is_not_rebuilt(agent_image, monkeypatch):
    before = sandbox.image_info(agent_image)

    def must_not_build(*a, **k):
        raise AssertionError("rebuilt an unchanged recipe")
    monkeypatch.setattr(images, "build", must_not_build)
    monkeypatch.setattr(images, "build_offline", must_not_build)
    monkeypatch.setattr(images, "build_registry", must_not_build)
    assert images.ensure_image(TEST_RECIPE) == agent_image
    after = sandbox.image_info(agent_image)
    assert (after["id"], after["created"]) == (before["id"], before["created"])


@pytest.mark.docker
def test_same_recipe_under_another_name_is_tagged_not_rebuilt(agent_image, monkeypatch):
    def must_not_build(*a, **k):
        raise AssertionError("rebuilt an image that exists under another name")
    monkeypatch.setattr(images, "build", must_not_build)
    alias = f"factory-test-alias-{secrets.token_hex(3)}"
    r = images.Recipe(name=alias, base=TEST_RECIPE.base, packages=TEST_RECIPE.packages)
    try:
        tag = images.ensure_image(r)
        assert sandbox.image_info(tag)["id"] == sandbox.image_info(agent_image)["id"]
        assert sandbox.image_info(f"{alias}:latest") is not None
    finally:
        for t in (f"{alias}:{images.recipe_hash(r)[:12]}", f"{alias}:latest"):
            subprocess.run(["docker", "rmi", t], capture_output=True)  # untags; the image stays
    assert sandbox.image_info(agent_image) is not None


@pytest.mark.docker
def test_repo_dockerfile_is_built_labelled_and_rebuilt_only_when_it_changes(agent_image, repo_dir):
    # FROM a local image: docker build needs no registry for that.
    path = os.path.join(repo_dir, "Dockerfile")
    name = f"factory-test-df-{secrets.token_hex(3)}"
    r = images.Recipe(name=name, dockerfile="Dockerfile", repo=repo_dir, build="auto")
    made = []
    try:
        with open(path, "w") as f:
            f.write(f"FROM {agent_image}\nENV FACTORY_TEST_MARK=one\n")
        tag1 = images.ensure_image(r, log=lambda m: None)
        made.append(tag1)
        info1 = sandbox.image_info(tag1)
        assert info1["labels"]["factory.recipe"] == images.recipe_hash(r)
        assert "FACTORY_TEST_MARK=one" in sandbox.client().api.inspect_image(tag1)["Config"]["Env"]
        assert images.ensure_image(r, log=lambda m: None) == tag1
        assert sandbox.image_info(tag1)["id"] == info1["id"]
        with open(path, "w") as f:
            f.write(f"FROM {agent_image}\nENV FACTORY_TEST_MARK=two\n")
        tag2 = images.ensure_image(r, log=lambda m: None)
        made.append(tag2)
        assert tag2 != tag1 and sandbox.image_info(tag2)["id"] != info1["id"]
        assert sandbox.image_info(f"{name}:latest")["id"] == sandbox.image_info(tag2)["id"]
    finally:
        for t in made + [f"{name}:latest"]:
            subprocess.run(["docker", "rmi", "-f", t], capture_output=True)
    assert sandbox.image_info(agent_image) is not None


@pytest.mark.docker
def test_agents_starting_together_build_a_recipe_once(agent_image, repo_dir, monkeypatch):
    with open(os.path.join(repo_dir, "Dockerfile"), "w") as f:
        f.write(f"FROM {agent_image}\nENV FACTORY_TEST_RACE={secrets.token_hex(4)}\n")
    name = f"factory-test-race-{secrets.token_hex(3)}"
    r = images.Recipe(name=name, dockerfile="Dockerfile", repo=repo_dir)
    builds, real_build = [], sandbox.build_image

    def counting_build(**kw):
        builds.append(kw["tag"])
        return real_build(**kw)
    monkeypatch.setattr(sandbox, "build_image", counting_build)
    tags, errors = [], []

    def one():
        try:
            tags.append(images.ensure_image(r, log=lambda m: None))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(tags) == 4 and len(set(tags)) == 1
        assert len(builds) == 1, f"built {len(builds)} times"
    finally:
        for t in (images.image_tag(r), f"{name}:latest"):
            subprocess.run(["docker", "rmi", "-f", t], capture_output=True)
