"""The host takes exactly one thing from an agent's workspace, and never through a link."""

from __future__ import annotations

import os

import pytest

from factory.workspace import Workspace, WorkspaceError, reap


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_RUNS_DIR", str(tmp_path / "runs"))
    return Workspace("run-1").create()


def test_a_regular_bundle_is_copied_out(ws):
    with open(os.path.join(ws.out, "result.bundle"), "wb") as f:
        f.write(b"bundle bytes")
    copy = ws.take_bundle()
    assert copy.startswith(ws.root) and not copy.startswith(ws.mount)
    assert open(copy, "rb").read() == b"bundle bytes"


def test_no_bundle_is_none(ws):
    assert ws.take_bundle() is None


def test_an_out_dir_swapped_for_a_link_is_refused(ws, tmp_path):
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "result.bundle").write_bytes(b"host file")
    os.rmdir(ws.out)
    os.symlink(host_dir, ws.out)
    with pytest.raises(WorkspaceError, match="cannot be read safely"):
        ws.take_bundle()


def test_a_bundle_that_is_a_link_or_a_fifo_is_refused(ws, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret")
    os.symlink(secret, os.path.join(ws.out, "result.bundle"))
    with pytest.raises(WorkspaceError, match="cannot be read safely"):
        ws.take_bundle()
    os.unlink(os.path.join(ws.out, "result.bundle"))
    os.mkfifo(os.path.join(ws.out, "result.bundle"))
    with pytest.raises(WorkspaceError, match="not a regular file"):
        ws.take_bundle()


def test_reap_removes_workspaces_of_dead_spawns_only(ws, tmp_path):
    dead = Workspace("run-dead").create()
    owner = os.path.join(dead.root, "owner.json")
    text = open(owner).read().replace(f'"pid": {os.getpid()}', '"pid": 999999999')
    open(owner, "w").write(text)
    assert reap() == ["run-dead"]
    assert os.path.isdir(ws.root) and not os.path.exists(dead.root)
