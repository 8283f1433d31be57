"""factory holds itself to its own prohibitions: every `check:` in intent/prohibitions passes
on this tree, and each check really fires when its rule is broken."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
from conftest import ROOT

CHECKS = {os.path.basename(p): p for p in glob.glob(os.path.join(ROOT, "intent", "prohibitions", "*.md"))
          if "README" not in p}

# For each prohibition, a line of code that breaks it (written to a scratch module).
VIOLATIONS = {
    "git-outside-gitstore.md": 'import subprocess\nsubprocess.run(["git", "status"])\n',
    "docker-outside-sandbox.md": "import docker\n",
}


def check_of(path):
    """The check as the gate reads it (intent.prohibitions: front matter, or a check: line)."""
    from factory import intent
    rel = os.path.relpath(path, ROOT)
    with open(path, "rb") as f:
        (found,) = intent.prohibitions({rel: f.read()})
    return found["check"]


def run_check(cmd):
    return subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_prohibition_holds(name):
    cmd = check_of(CHECKS[name])
    if cmd is None:
        pytest.skip(f"{name} has no machine check")
    r = run_check(cmd)
    assert r.returncode == 0, f"{name} is violated:\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_prohibition_check_fires(name):
    probe = os.path.join(ROOT, "lib", "factory", "zz_violation_probe.py")
    with open(probe, "w") as f:
        f.write(VIOLATIONS[name])
    try:
        r = run_check(check_of(CHECKS[name]))
        assert r.returncode != 0 and "zz_violation_probe.py" in r.stdout
    finally:
        os.unlink(probe)
