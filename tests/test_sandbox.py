"""The sandbox against the real engine: every hardening claim is checked from inside the
container (and in `docker inspect`), and limits are hit for real: a fork bomb, a memory
hog, a runaway command, a deadline. Every container carries this run's label and is
removed in teardown, even when the test fails."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time

import pytest

from factory import config, images, sandbox
from factory.sandbox import ExecResult, HeadTail, Sandbox

# The same recipe as test_images.py's: one hash, one image, built once.
TEST_RECIPE = images.Recipe(name="factory-test-agent", base=config.DEFAULTS["image"]["base"],
                            packages=tuple(config.DEFAULTS["image"]["packages"]), build="auto")

RUN = f"t{os.getpid()}-{secrets.token_hex(3)}"  # this session's label: finds leftovers
CANARY = "sk-ant-test-canary"
LIMITS = dict(cpus=1.0, memory="256m", pids=64, tmp_size="64m", disk="32m")


@pytest.fixture(scope="session")
def agent_image():
    """Build once, keep (see test_images.py): a lookup after the first session."""
    return images.ensure_image(TEST_RECIPE)


@pytest.fixture(scope="session", autouse=True)
def no_leftovers():
    yield
    try:
        left = sandbox.list_containers({"factory.test": RUN})
    except sandbox.EngineUnavailable:
        return
    for c in left:
        Sandbox(c["id"]).remove()
    assert not left, f"containers left behind: {left}"


@pytest.fixture
def objects():
    """A directory standing for a repository's object store, writable by everyone on the
    host (and owned by the agent's uid, as a normal user's repository would be), so that
    only the mount can keep the agent from changing it."""
    d = tempfile.mkdtemp(prefix="factory-test-objects-")
    os.makedirs(os.path.join(d, "ab"))
    with open(os.path.join(d, "ab", "cdef"), "wb") as f:
        f.write(b"host object\n")
    for p in (d, os.path.join(d, "ab"), os.path.join(d, "ab", "cdef")):
        os.chmod(p, 0o777 if os.path.isdir(p) else 0o666)
        if os.geteuid() == 0:
            os.chown(p, 1000, 1000)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start(agent_image, objects):
    """start(**overrides) -> a Sandbox with this run's label, removed at teardown."""
    made = []

    def _start(**kw):
        args = dict(LIMITS, deadline_s=300, labels={})
        args.update(kw)
        args["labels"] = {"factory.test": RUN, **args["labels"]}
        sb = Sandbox.start(agent_image, objects=args.pop("objects", objects), **args)
        made.append(sb)
        return sb

    yield _start
    for sb in made:
        sb.remove()


@pytest.fixture
def sb(start):
    return start()


def procs(sb) -> list[str]:
    return ok(sb, "ps -eo args --no-headers").splitlines()


def ok(sb, cmd, timeout=20) -> str:
    r = sb.exec(cmd, timeout=timeout)
    assert r.exit_code == 0, f"{cmd!r} failed ({r.exit_code}): {r.output}"
    return r.output


# -- hardening, seen from inside -------------------------------------------------------

@pytest.mark.docker
def test_no_network(sb):
    ifaces = [line.split(":")[0].strip() for line in ok(sb, "cat /proc/net/dev").splitlines()[2:]]
    assert ifaces == ["lo"]
    r = sb.exec("echo > /dev/tcp/1.1.1.1/80", timeout=10)
    assert r.exit_code != 0 and "unreachable" in r.output
    r = sb.exec("getent hosts deb.debian.org", timeout=10)
    assert r.exit_code != 0 and r.output == ""


@pytest.mark.docker
def test_runs_as_agent_without_capabilities_or_new_privileges(sb):
    assert ok(sb, "id -u; id -g").split() == ["1000", "1000"]
    status = dict(line.split(":\t", 1) for line in ok(sb, "cat /proc/self/status").splitlines() if ":\t" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, f"{cap} is {status[cap]}"
    assert status["NoNewPrivs"].strip() == "1"
    # PID 1 is an init that reaps; the deadline's sleep runs under it
    assert ok(sb, "cat /proc/1/cmdline | tr '\\0' ' '").startswith("/sbin/docker-init -- sleep 300")


@pytest.mark.docker
def test_read_only_root_writable_workspace_and_tmp(sb):
    for path in ("/x", "/etc/x", "/usr/bin/x", "/home/agent/x"):
        r = sb.exec(f"touch {path}", timeout=10)
        assert r.exit_code != 0 and ("Read-only file system" in r.output or "Permission denied" in r.output), path
    ok(sb, "echo hi > /workspace/w && echo hi > /tmp/t && printf '#!/bin/sh\\necho ran\\n' > /tmp/s.sh "
           "&& chmod +x /tmp/s.sh")
    assert ok(sb, "/tmp/s.sh") == "ran\n", "/tmp is exec-able (documented choice)"
    assert ok(sb, "stat -c %u:%g /workspace/w") == "1000:1000\n"
    mounts = {line.split()[1]: line for line in ok(sb, "cat /proc/mounts").splitlines()}
    for path, size in (("/tmp", "size=65536k"), ("/workspace", "size=32768k")):
        assert mounts[path].startswith("tmpfs ") and "nosuid" in mounts[path] and "nodev" in mounts[path], path
        assert size in mounts[path], mounts[path]


@pytest.mark.docker
def test_the_workspace_has_a_size_limit_and_takes_no_host_disk(sb):
    r = sb.exec("fallocate -l 64m /workspace/big; echo rc=$?; head -c 40m /dev/zero > /workspace/f; echo rc=$?; "
                "df -k /workspace | tail -1", timeout=30)
    assert "No space left on device" in r.output and "rc=0" not in r.output, r.output
    assert sb.alive()


@pytest.mark.docker
def test_objects_are_the_only_host_path_read_only_and_there_is_no_docker_socket(sb, objects):
    r = sb.exec("ls -l /var/run/docker.sock /run/docker.sock; grep -c docker.sock /proc/self/mountinfo", timeout=10)
    assert "No such file" in r.output and r.output.rstrip().endswith("0")
    mounts = sb.docker.api.inspect_container(sb.id)["Mounts"]
    assert [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in mounts] == \
        [("bind", objects, "/factory/objects", False)]


@pytest.mark.docker
def test_an_object_the_agent_owns_on_the_host_still_cannot_be_changed(sb, objects):
    """The files are the agent uid's and mode 666 on the host: only the read-only mount
    stands between the agent and them, and it holds."""
    assert ok(sb, "cat /factory/objects/ab/cdef") == "host object\n"
    r = sb.exec("chmod u+w /factory/objects/ab/cdef; echo x >> /factory/objects/ab/cdef; "
                "touch /factory/objects/new; rm -f /factory/objects/ab/cdef; "
                "mount -o remount,rw /factory/objects; echo tried", timeout=10)
    assert "tried" in r.output and r.output.count("Read-only file system") >= 3, r.output
    with open(os.path.join(objects, "ab", "cdef"), "rb") as f:
        assert f.read() == b"host object\n"
    assert sorted(os.listdir(objects)) == ["ab"]


@pytest.mark.docker
def test_host_environment_does_not_leak(start, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)
    monkeypatch.setenv("FACTORY_TEST_CANARY", CANARY)
    sb = start()
    seen = ok(sb, "env; tr '\\0' '\\n' < /proc/1/environ; tr '\\0' '\\n' < /proc/$$/environ")
    assert "HOME=/tmp" in seen and "GIT_AUTHOR_NAME=" in seen
    assert CANARY not in seen and "ANTHROPIC_API_KEY" not in seen
    env = sb.docker.api.inspect_container(sb.id)["Config"]["Env"]
    assert not any(CANARY in e or e.startswith("ANTHROPIC") for e in env), env


@pytest.mark.docker
def test_inspect_shows_limits_labels_and_deadline(start):
    before = time.time()
    sb = start(labels={"factory.issue": "7f3a", "factory.run": "r1", "factory.slot": "worker-2"}, deadline_s=120)
    a = sb.docker.api.inspect_container(sb.id)
    h = a["HostConfig"]
    assert h["NetworkMode"] == "none"
    assert h["CapDrop"] == ["ALL"] and not h.get("CapAdd")
    assert h["SecurityOpt"] == ["no-new-privileges"]
    assert h["ReadonlyRootfs"] is True and h["Init"] is True and h["AutoRemove"] is True
    assert h["Privileged"] is False
    assert h["PidsLimit"] == 64
    assert h["Memory"] == h["MemorySwap"] == 256 << 20
    assert h["NanoCpus"] == 1_000_000_000
    assert a["Config"]["User"] == "1000:1000"
    labels = a["Config"]["Labels"]
    assert labels["factory"] == "1" and labels["factory.issue"] == "7f3a" and labels["factory.slot"] == "worker-2"
    assert labels["factory.owner_pid"] == str(os.getpid())
    assert before + 119 <= int(labels["factory.deadline"]) <= time.time() + 121
    assert sb.labels["factory.deadline"] == labels["factory.deadline"]


# -- limits, hit for real --------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.parametrize("bomb", [
    ":(){ :|:& };:; sleep 3",
    # a nested timeout moves the bomb into a process group of its own, and the bomb
    # holds the pipe to tail open, so only the exec's timeout and the sweep end it
    "timeout 10 bash -c ':(){ :|:& };:' 2>&1 | tail -2; echo bomb-over",
], ids=["plain", "own-process-group"])
def test_fork_bomb_stops_at_the_pids_limit_and_the_container_survives(sb, bomb):
    started = time.monotonic()
    r = sb.exec(bomb, timeout=5)
    assert time.monotonic() - started < 5 + sandbox.KILL_GRACE_S + 5
    if bomb.endswith("sleep 3"):
        assert "Resource temporarily unavailable" in r.output, r.output[:500]
    else:
        assert r.timed_out, r
    assert sb.alive()
    # nothing of the bomb outlives its exec: the container is usable again at once
    assert len(procs(sb)) < 10, ok(sb, "ps -ef")
    assert subprocess.run(["true"]).returncode == 0  # and the host can still fork


@pytest.mark.docker
def test_memory_hog_is_killed_not_the_container_or_host(sb):
    before = sb.oom_kills()
    assert before is not None, "the memory cgroup's oom_kill counter is readable"
    r = sb.exec("head -c 1G /dev/zero | tail", timeout=60)
    assert r.exit_code == 137 and not r.timed_out, r
    assert r.duration < 30
    assert sb.oom_kills() > before
    assert sb.alive() and ok(sb, "echo still here") == "still here\n"


@pytest.mark.docker
def test_exec_timeout_kills_the_command_inside_the_container(sb):
    r = sb.exec("echo begun; sleep 30", timeout=1)
    assert (r.exit_code, r.timed_out, r.output) == (124, True, "begun\n")
    assert 1 <= r.duration < 4
    r = sb.exec("trap '' TERM; sleep 30", timeout=1)  # ignores TERM: KILL after the grace
    assert (r.exit_code, r.timed_out) == (137, True)
    assert 1 + sandbox.KILL_GRACE_S <= r.duration < 1 + sandbox.KILL_GRACE_S + 3
    assert "sleep 30" not in procs(sb), "the timed-out command is gone"


@pytest.mark.docker
def test_exec_merges_output_and_passes_the_exit_code(sb):
    r = sb.exec("echo out; echo err >&2; echo out2; exit 3", timeout=10)
    assert (r.exit_code, r.timed_out, r.truncated) == (3, False, False)
    assert r.output == "out\nerr\nout2\n"
    r = sb.exec('echo "$PWD $FOO $HOME"', timeout=10, workdir="/tmp", env={"FOO": "bar"})
    assert r.output == "/tmp bar /tmp\n"
    assert sb.exec("exit 124", timeout=10).timed_out is False, "only a command that ran its whole timeout"


@pytest.mark.docker
def test_output_truncation_keeps_head_and_tail(sb):
    r = sb.exec("seq 1 200000", timeout=20, max_output=1000)
    total = len("".join(f"{i}\n" for i in range(1, 200001)))
    assert r.exit_code == 0 and r.truncated
    assert r.output.startswith("1\n2\n3\n") and r.output.endswith("199999\n200000\n")
    assert f"{total - 1000} bytes cut" in r.output and f"output was {total} bytes" in r.output
    assert len(r.output) < 1200
    assert sb.exec("seq 1 10", timeout=10, max_output=1000).truncated is False


@pytest.mark.docker
def test_background_processes_end_with_their_exec_unless_detached(sb):
    r = sb.exec("sleep 60 & echo started", timeout=30)
    assert (r.exit_code, r.output) == (0, "started\n") and r.duration < 2
    assert "sleep 60" not in procs(sb), "a background job ends with its exec"
    r = sb.exec("timeout 50 sleep 63 & sleep 0.3; echo nested", timeout=30)
    assert r.output == "nested\n" and "sleep 63" not in procs(sb), "its own process group, same session"
    # setsid leaves the session, so it survives its exec (until the deadline)
    r = sb.exec("setsid sleep 61 >/dev/null 2>&1 & sleep 0.5; echo detached", timeout=30)
    assert (r.exit_code, r.output) == (0, "detached\n") and r.duration < 2
    assert "sleep 61" in procs(sb)
    # one that keeps the exec's stdout open does not hold the exec much longer either
    r = sb.exec("setsid sleep 62 & sleep 0.5; echo held", timeout=30)
    assert (r.exit_code, r.output) == (0, "held\n") and r.duration < 4


def test_head_tail_keeps_both_ends_across_chunks():
    h = HeadTail(10)
    for ch in [b"ab", b"cdefgh", b"ijklmnop", b"qrstuvwxyz"]:
        h.add(ch)
    text, truncated = h.result()
    assert truncated and text.startswith("abcde\n[... 16 bytes cut") and text.endswith("\nvwxyz")
    h = HeadTail(10)
    h.add(b"0123456789")
    assert h.result() == ("0123456789", False)
    h = HeadTail(100)
    for _ in range(10000):
        h.add(b"x" * 1000)
    assert len(h.tail) < 3 * 100 + 65536, "memory stays bounded"


# -- files -----------------------------------------------------------------------------

@pytest.mark.docker
def test_write_and_read_files(sb):
    data = bytes(range(256)) * 3
    assert sb.write_file("sub/dir/f.bin", data) == "/workspace/sub/dir/f.bin"
    assert sb.read_file("/workspace/sub/dir/f.bin") == data
    assert ok(sb, "stat -c %u /workspace/sub/dir/f.bin") == "1000\n"
    big = os.urandom(1_500_000)  # several argv chunks and more than one exec
    sb.write_file("/tmp/big", big)
    assert sb.read_file("/tmp/big") == big
    sb.write_file("/tmp/empty", b"")
    assert sb.read_file("/tmp/empty") == b""
    # an existing file keeps its mode; no temp file is left beside it
    ok(sb, "printf 'echo one\\n' > /workspace/run.sh && chmod 755 /workspace/run.sh")
    sb.write_file("run.sh", b"echo two\n")
    assert ok(sb, "/workspace/run.sh") == "two\n"
    assert ok(sb, "stat -c %a /workspace/run.sh") == "755\n"
    assert "factory-" not in ok(sb, "ls -a /workspace /tmp")
    with pytest.raises(FileNotFoundError):
        sb.read_file("/tmp/none")
    with pytest.raises(sandbox.SandboxError, match="larger than"):
        sb.read_file("/tmp/big", max_bytes=1000)


@pytest.mark.docker
def test_paths_outside_workspace_and_tmp_are_refused(sb):
    for bad in ("/etc/passwd", "/workspace/../etc/x", "../x", "/tmpx/y", "/", "/workspace", "/tmp"):
        with pytest.raises(ValueError, match="outside"):
            sb.write_file(bad, b"x")
        with pytest.raises(ValueError, match="outside"):
            sb.read_file(bad)
    assert sandbox.container_path("a/b") == "/workspace/a/b"
    assert sandbox.container_path("/tmp/a/../b") == "/tmp/b"


# -- life, deadline, reaping -----------------------------------------------------------

@pytest.mark.docker
def test_state_and_remove_is_idempotent(sb):
    st = sb.state()
    assert (st.status, st.exit_code, st.oom_killed) == ("running", None, False) and sb.alive()
    sb.remove()
    assert sb.state().status == "gone" and not sb.alive()
    sb.remove()
    Sandbox("0" * 64).remove()  # never existed: fine too
    with pytest.raises(sandbox.SandboxGone):
        sb.exec("true", timeout=5)


@pytest.mark.docker
def test_deadline_removes_the_container_by_itself(start):
    started = time.monotonic()
    sb = start(deadline_s=3)
    assert sb.alive()
    while sb.state().status != "gone" and time.monotonic() - started < 20:
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    assert sb.state().status == "gone", "the container outlived its deadline"
    assert 2.5 <= elapsed < 10
    assert not [c for c in sandbox.list_containers({"factory.test": RUN}) if c["id"] == sb.id]


@pytest.mark.docker
def test_deadline_mid_exec_raises_sandbox_gone(start):
    sb = start(deadline_s=2)
    started = time.monotonic()
    with pytest.raises(sandbox.SandboxGone):
        sb.exec("sleep 30", timeout=60)
    assert time.monotonic() - started < 10


@pytest.mark.docker
def test_reap_removes_containers_of_dead_owners_only(start):
    # Above the largest pid_max Linux allows (2**22): names no process, and never will,
    # unlike the pid of a finished child, which a busy host may hand out again.
    dead_pid = 2**22 + 1
    case = secrets.token_hex(3)
    orphan = start(labels={"factory.owner_pid": str(dead_pid), "factory.case": case})
    owned = start(labels={"factory.case": case})  # owner_pid: this process
    mine = {"factory.test": RUN, "factory.case": case}
    assert {c["id"] for c in sandbox.list_containers(mine)} == {orphan.id, owned.id}
    assert [c["id"] for c in sandbox.list_containers(mine, **{"factory.owner_pid": str(dead_pid)})] == [orphan.id]
    assert sandbox.reap(owner_alive=lambda labels: True, filters=mine) == []
    assert orphan.alive()
    assert sandbox.reap(filters=mine) == [orphan.id]
    assert orphan.state().status == "gone"
    assert owned.alive()


@pytest.mark.docker
def test_exec_to_file_streams_stdout_and_stops_at_its_limit(sb, tmp_path):
    dest = str(tmp_path / "out.bin")
    r = sb.exec_to_file("head -c 3000 /dev/urandom | tee /tmp/sent; echo note >&2", dest, max_bytes=10_000, timeout=30)
    assert (r.exit_code, r.bytes, r.over) == (0, 3000, False) and "note" in r.stderr
    with open(dest, "rb") as f:
        assert f.read() == sb.read_file("/tmp/sent")
    r = sb.exec_to_file("head -c 50000 /dev/zero", dest, max_bytes=10_000, timeout=30)
    assert (r.bytes, r.over) == (10_000, True) and os.path.getsize(dest) == 10_000


def test_exec_result_is_json_ready():
    r = ExecResult(0, "x", False, False, 0.1)
    assert r.to_dict() == {"exit_code": 0, "output": "x", "timed_out": False, "truncated": False, "duration": 0.1}


def test_owner_alive_reads_the_owner_pid_label():
    import socket
    here = socket.gethostname()
    assert sandbox.owner_alive({"factory.owner_pid": str(os.getpid()), "factory.host": here})
    assert not sandbox.owner_alive({"factory.owner_pid": str(2**22 + 1), "factory.host": here})
    assert not sandbox.owner_alive({"factory.owner_pid": "nope"})
    assert not sandbox.owner_alive({})
    assert sandbox.owner_alive({"factory.owner_pid": str(2**22 + 1), "factory.host": here + "-elsewhere"}), \
        "another host's container is not ours to judge"
