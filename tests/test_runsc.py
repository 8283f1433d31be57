"""sandbox.runtime: agents under gVisor (runsc), and the errors that say how to register a
runtime the engine lacks.

The real run needs an engine with runsc registered in gVisor's no-network mode, which the
machine's default engine need not have (and must not be reconfigured for a test): the
module starts an engine of its own (tests/privateengine.py), registers runsc in its
daemon.json as ./setup --runsc does and reloads it with SIGHUP, copies the agent image
into it from the default engine, and points factory-spawn at it with DOCKER_HOST. Where runsc is missing the fixture installs it (root with apt-get); it skips
only where that or the engine cannot work, and under CI it fails instead.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import time

import pytest
from conftest import ROOT
from modelserver import ScriptedModel, text, tool_use
from privateengine import EngineFailed, PrivateEngine
from spawnkit import CANARY_KEY, file_issue, git, sample_repo, spawn, spawn_env, tool_results

from factory import sandbox

GVISOR_KERNEL = "4.4.0"  # what gVisor's kernel says it is (uname -r)
REGISTER = os.path.join(ROOT, "scripts", "register-runsc")


def _unavailable(reason: str):
    """Skip, or under CI fail: CI runs as root with apt-get, so there runsc must work."""
    if os.environ.get("CI"):
        pytest.fail(f"under CI runsc must work: {reason}")
    pytest.skip(reason)


def _ensure_runsc() -> str:
    found = shutil.which("runsc") or ("/usr/bin/runsc" if os.access("/usr/bin/runsc", os.X_OK) else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable("runsc is not installed (as root: apt-get install -y runsc, or ./setup --runsc)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "runsc"]
    p = subprocess.run(install, capture_output=True, text=True, env=env, timeout=300)
    if p.returncode != 0:  # a fresh machine may not have read the package lists yet
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        p = subprocess.run(install, capture_output=True, text=True, env=env, timeout=300)
    if p.returncode != 0 or not os.access("/usr/bin/runsc", os.X_OK):
        _unavailable(f"cannot install runsc: {p.stderr.strip()[-300:]}")
    return "/usr/bin/runsc"


def register(daemon_json, runsc="/usr/bin/runsc"):
    return subprocess.run([REGISTER, "--runsc", runsc, str(daemon_json)], capture_output=True, text=True)


def engine_runsc_args(engine):
    p = engine.docker("info", "--format", "{{json .Runtimes.runsc}}", check=False)
    entry = json.loads(p.stdout or "null") if p.returncode == 0 else None
    return (entry or {}).get("runtimeArgs")


@pytest.fixture(scope="module")
def runsc_engine(default_image):
    """An engine of this module's own, started with only a plain runsc registration (for
    the error test), then given runsc as ./setup --runsc does it: register-runsc on its
    daemon.json and a SIGHUP, no restart. It holds the agent image."""
    runsc = _ensure_runsc()
    engine = PrivateEngine({"runtimes": {"runsc-plain": {"path": runsc}}}, prefix="factory-runsc")
    try:
        try:
            engine.start()
        except (EngineFailed, OSError) as e:
            _unavailable(f"cannot start a private Docker engine: {e}")
        assert engine_runsc_args(engine) is None
        p = register(engine.config_path, runsc)
        assert p.returncode == 0, p.stderr
        engine.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while engine_runsc_args(engine) != ["--network=none"]:
            assert time.monotonic() < deadline, f"dockerd did not reload runsc on SIGHUP: {engine.log_tail()}"
            time.sleep(0.1)
        engine.load_image(default_image)  # the two engines' image stores are separate
        yield engine
        assert engine.containers() == [], "a container was left in the private engine"
    finally:
        engine.stop()


@pytest.fixture
def on_engine(runsc_engine, monkeypatch):
    """In-process Docker calls go to the private engine."""
    monkeypatch.setenv("DOCKER_HOST", runsc_engine.host)
    return runsc_engine


# -- the hints, without an engine --------------------------------------------------------

class FakeError(Exception):
    def __init__(self, explanation):
        super().__init__(explanation)
        self.explanation = explanation


class FakeDocker:
    def info(self):
        return {"Runtimes": {"runc": {}, "io.containerd.runc.v2": {}}}


@pytest.mark.parametrize("message", ["Unknown runtime specified runsc",              # docker 20.10
                                     "unknown or invalid runtime name: runsc"])     # docker 23+
def test_an_unknown_runsc_says_how_to_register_it(message):
    hint = sandbox.runtime_hint("runsc", FakeError(message), FakeDocker())
    assert "knows no runtime 'runsc'" in hint and "it knows: io.containerd.runc.v2, runc" in hint
    assert "./setup --runsc" in hint and '"runtimeArgs": ["--network=none"]' in hint
    assert "systemctl reload docker" in hint and "sandbox.runtime" in hint


def test_another_unknown_runtime_is_told_where_to_register_it():
    hint = sandbox.runtime_hint("kata", FakeError("Unknown runtime specified kata"), None)
    assert "knows no runtime 'kata'" in hint and "daemon.json" in hint and "./setup --runsc" not in hint


def test_other_errors_get_no_runtime_hint():
    assert sandbox.runtime_hint("runsc", FakeError("No such image: x"), FakeDocker()) is None
    assert sandbox.runtime_hint(None, FakeError("Unknown runtime specified x"), FakeDocker()) is None


def test_register_runsc_merges_its_entry_and_keeps_the_rest(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text('{"log-level": "warn", "runtimes": {"crun": {"path": "/usr/bin/crun"}}}')
    path.chmod(0o600)
    p = register(path)
    assert p.returncode == 0, p.stderr
    assert json.loads(path.read_text()) == {"log-level": "warn", "runtimes": {
        "crun": {"path": "/usr/bin/crun"}, **sandbox.RUNSC_ENTRY}}
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.stat().st_mtime_ns
    again = register(path)
    assert again.returncode == 0 and "already registered" in again.stderr and path.stat().st_mtime_ns == before
    assert sorted(os.listdir(tmp_path)) == ["daemon.json"], "a temp file was left beside it"


def test_register_runsc_replaces_an_entry_without_the_no_network_mode_and_creates_a_missing_file(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text('{"runtimes": {"runsc": {"path": "/usr/bin/runsc"}}}')
    p = register(path)
    assert p.returncode == 0 and "replacing" in p.stderr
    assert json.loads(path.read_text()) == {"runtimes": sandbox.RUNSC_ENTRY}
    fresh = tmp_path / "etc" / "docker" / "daemon.json"
    assert register(fresh).returncode == 0 and json.loads(fresh.read_text()) == {"runtimes": sandbox.RUNSC_ENTRY}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"runtimes": []}'])
def test_register_runsc_leaves_a_broken_daemon_json_alone(tmp_path, text):
    path = tmp_path / "daemon.json"
    path.write_text(text)
    p = register(path)
    assert p.returncode == 2 and "left as it was" in p.stderr
    assert path.read_text() == text


# -- against real engines ----------------------------------------------------------------

def _start(image, name, runtime):
    return sandbox.Sandbox.start(image, labels={"factory.run": name}, cpus=0.5, memory="256m", pids=512,
                                 tmp_size="16m", disk="64m", deadline_s=120, runtime=runtime)


@pytest.mark.docker
def test_a_runtime_the_engine_lacks_is_refused_with_how_to_register_it(default_image):
    name = f"runtime-test-{os.getpid()}"
    with pytest.raises(sandbox.SandboxError) as e:
        _start(default_image, name, "factory-no-such-runtime")
    assert "knows no runtime 'factory-no-such-runtime'" in str(e.value) and "runc" in str(e.value)
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=factory.run={name}"],
                          capture_output=True, text=True).stdout.split()
    assert left == []


@pytest.mark.docker
def test_runsc_without_its_no_network_mode_is_refused_with_the_fix(on_engine, default_image):
    with pytest.raises(sandbox.SandboxError) as e:
        _start(default_image, f"runsc-plain-{os.getpid()}", "runsc-plain")
    assert '"runtimeArgs": ["--network=none"]' in str(e.value) and "reload the engine" in str(e.value)
    assert on_engine.containers() == [], "the container that could not start was not removed"


@pytest.mark.docker
def test_a_worker_runs_under_gvisor_and_its_work_lands_on_the_branch(on_engine, tmp_path, tool_env):
    assert platform.release() != GVISOR_KERNEL, "the host's kernel looks like gVisor's: this test would prove nothing"
    repo = sample_repo(tmp_path / "calc")
    (repo / "factory.yaml").write_text("sandbox:\n  runtime: runsc\n")
    git(repo, "add", "factory.yaml")
    git(repo, "commit", "-qm", "agents under gVisor")
    issue = file_issue(repo, tool_env)
    script = [
        tool_use("bash", {"command": "uname -r; dmesg 2>/dev/null | head -1"}),
        tool_use("str_replace_based_edit_tool", {"command": "str_replace", "path": "/workspace/repo/calc.py",
                                                 "old_str": "return a - b", "new_str": "return a + b"}),
        tool_use("bash", {"command": "python3 -m unittest -q 2>&1 | tail -1 && git add -A && git commit -qm 'Make add() add'"}),
        text("Fixed add()."),
    ]
    with ScriptedModel(script) as api:
        env = on_engine.env(spawn_env(tool_env, api, tmp_path / "runs"))
        code, run, err = spawn(repo, env, issue, timeout=120)
    assert code == 0, err
    assert run["status"] == "ok" and run["turns"] == 4, run
    results = tool_results(api)
    assert results[0].split()[0] == GVISOR_KERNEL, f"the tool call did not run under gVisor: {results[0]!r}"
    assert "OK" in results[2], results
    branch = f"factory/{issue['id']}"
    assert run["branch"] == branch and git(repo, "rev-parse", branch) == run["commit"]
    assert git(repo, "show", f"{branch}:calc.py") == "def add(a, b):\n    return a + b"
    assert git(repo, "log", "-1", "--format=%s", branch) == "Make add() add"
    assert on_engine.containers() == [], "the agent's container remains"
    assert os.listdir(tmp_path / "runs") == [], "the workspace remains"
    assert CANARY_KEY not in err
