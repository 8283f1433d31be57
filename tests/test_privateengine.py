"""A test's own Docker engine shares nothing with the machine's: starting and stopping
one leaves the machine's network interfaces (its docker0 bridge above all) as they were."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from privateengine import PrivateEngine

pytestmark = pytest.mark.docker


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dockerd"), reason="a private engine needs root and dockerd")
def test_a_private_engine_leaves_the_machines_network_alone():
    before = links()
    engine = PrivateEngine(data_tmpfs="64m")
    try:
        engine.start()
        assert engine.answers()
        assert links() == before, "starting it changed the machine's interfaces"
    finally:
        engine.stop()
    assert links() == before, "stopping it changed the machine's interfaces"
