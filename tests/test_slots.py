"""factory-slot: quotas hold under real concurrency, leases never leak, codes pass through."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import run_tool

# Each holder appends "start T" and "end T" lines; the overlap of intervals is what we check.
HOLD = "echo start $(date +%s.%N) $FACTORY_SLOT >> {log}; sleep {secs}; echo end $(date +%s.%N) >> {log}"


@pytest.fixture
def slot_env(tool_env, tmp_path):
    return dict(tool_env, FACTORY_SLOTS_DIR=str(tmp_path / "slots"), FACTORY_CPUS="64", FACTORY_MEMORY="256g")


def configure(repo, text):
    (repo / "factory.yaml").write_text(text)


def max_concurrency(log):
    events = []
    for line in open(log):
        what, t, *_ = line.split()
        events.append((float(t), 1 if what == "start" else -1))
    running = peak = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        running += d
        peak = max(peak, running)
    return peak, sum(1 for _, d in events if d == 1)


def launch(repo, env, kind, cmd):
    return subprocess.Popen(["factory-slot", "-q", kind, "--", "sh", "-c", cmd], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_more_work_than_slots_never_oversubscribes_a_kind(git_repo, slot_env, tmp_path):
    configure(git_repo, "slots:\n  total: 8\n  worker: 2\n")
    log = tmp_path / "log"
    procs = [launch(git_repo, slot_env, "worker", HOLD.format(log=log, secs=0.6)) for _ in range(6)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    peak, runs = max_concurrency(log)
    assert runs == 6 and peak == 2
    slots_used = {line.split()[2] for line in open(log) if line.startswith("start")}
    assert slots_used == {"worker.0", "worker.1"}


def test_the_total_caps_all_kinds_together(git_repo, slot_env, tmp_path):
    configure(git_repo, "slots:\n  total: 2\n  worker: 2\n  sensor: 2\n  adversary: 1\n")
    log = tmp_path / "log"
    procs = [launch(git_repo, slot_env, k, HOLD.format(log=log, secs=0.6))
             for k in ("worker", "sensor", "worker", "sensor", "adversary")]
    assert [p.wait(timeout=60) for p in procs] == [0] * 5
    peak, runs = max_concurrency(log)
    assert runs == 5 and peak == 2


def test_exit_code_stdin_and_lease_pass_through(git_repo, slot_env):
    r = run_tool(["factory-slot", "sensor", "--", "sh", "-c", "cat; echo $FACTORY_SLOT $FACTORY_SLOT_CPUS; exit 7"],
                 cwd=git_repo, env=slot_env, input="from stdin\n")
    assert r.returncode == 7 and r.stdout == "from stdin\nsensor.0 0.5\n"
    r = run_tool(["factory-slot", "worker", "--", "sh", "-c", "kill -9 $$"], cwd=git_repo, env=slot_env)
    assert r.returncode == -signal.SIGKILL  # the command's own death, as a shell shows 137
    r = run_tool(["factory-slot", "worker", "--", "no-such-command-xyz"], cwd=git_repo, env=slot_env)
    assert r.returncode == 127
    r = run_tool(["factory-slot", "worker"], cwd=git_repo, env=slot_env)
    assert r.returncode == 64 and "no command" in r.stderr


@pytest.mark.parametrize("code", [1, 2, 3, 7, 64, 69, 75, 78])
def test_the_commands_code_passes_through_unchanged_whatever_it_is(git_repo, slot_env, code):
    """Even codes factory-slot uses itself: a caller that wants to tell them apart runs a
    command that keeps off them (factory-spawn does)."""
    r = run_tool(["factory-slot", "worker", "--", "sh", "-c", f"exit {code}"], cwd=git_repo, env=slot_env)
    assert r.returncode == code and r.stderr == ""


def test_factory_slots_own_refusals_never_use_its_commands_codes(git_repo, slot_env, tmp_path):
    """Each refusal has a sysexits code of its own, outside factory-spawn's (0-7) and what a
    command's usage error (2) or failure (1) would give; the command never runs."""
    from factory import exits
    marker = tmp_path / "ran"
    cmd = ["--", "touch", str(marker)]
    spawn_codes = set(exits.SPAWN_STATUS.values()) | {exits.SPAWN_BAD_TASK, exits.SPAWN_NOT_RUN}
    cases = {
        "usage: not a kind": (["wroker", *cmd], slot_env, exits.SLOT_USAGE, "not a kind of slot"),
        "usage: no command": (["worker"], slot_env, exits.SLOT_USAGE, "no command"),
        "never fits: memory": (["worker", *cmd], dict(slot_env, FACTORY_MEMORY="1m"), exits.SLOT_CANNOT_FIT,
                               "memory: a worker asks for 2 GiB (resources.worker.memory) and this machine "
                               "allows 1 MiB (FACTORY_MEMORY=1m)"),
        "never fits: cpus": (["worker", *cmd], dict(slot_env, FACTORY_CPUS="0.5"), exits.SLOT_CANNOT_FIT,
                             "cpus: a worker asks for 1 CPUs (resources.worker.cpus) and this machine allows 0.5"),
        "bad FACTORY_MEMORY": (["worker", *cmd], dict(slot_env, FACTORY_MEMORY="lots"), exits.SLOT_CONFIG,
                               "FACTORY_MEMORY='lots' is not a size"),
        "bad FACTORY_CPUS": (["worker", *cmd], dict(slot_env, FACTORY_CPUS="many"), exits.SLOT_CONFIG,
                             "FACTORY_CPUS='many' is not a number"),
    }
    for name, (args, env, code, says) in cases.items():
        r = run_tool(["factory-slot", *args], cwd=git_repo, env=env)
        assert (r.returncode, code in spawn_codes | {0, 1, 2}) == (code, False), name
        assert says in r.stderr, (name, r.stderr)
    configure(git_repo, "slots:\n  worker: 3\n  wrkers: 2\n")
    r = run_tool(["factory-slot", "worker", *cmd], cwd=git_repo, env=slot_env)
    assert r.returncode == exits.SLOT_CONFIG and "factory.yaml line 3: slots.wrkers: unknown key" in r.stderr
    configure(git_repo, "slots:\n  worker: 0\n")
    r = run_tool(["factory-slot", "worker", *cmd], cwd=git_repo, env=slot_env)
    assert r.returncode == exits.SLOT_CANNOT_FIT and "slots.worker is 0" in r.stderr
    r = run_tool(["factory-slot", "worker", *cmd], cwd=tmp_path, env=slot_env)
    assert r.returncode == exits.SLOT_USAGE and "not a git repository" in r.stderr
    assert not marker.exists(), "a refused command never runs"


def test_kill_9_of_the_holder_frees_its_slot_at_once(git_repo, slot_env):
    configure(git_repo, "slots:\n  worker: 1\n")
    holder = subprocess.Popen(["factory-slot", "worker", "--", "sleep", "60"], cwd=git_repo, env=slot_env)
    deadline = time.monotonic() + 10
    while json.loads(run_tool(["factory-slot", "status"], cwd=git_repo, env=slot_env).stdout)["kinds"]["worker"]["used"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    busy = run_tool(["factory-slot", "worker", "--no-wait", "--", "true"], cwd=git_repo, env=slot_env)
    assert busy.returncode == 75 and "no worker slot" in busy.stderr
    status = json.loads(run_tool(["factory-slot", "status"], cwd=git_repo, env=slot_env).stdout)
    assert status["kinds"]["worker"]["leases"][0]["pid"] == holder.pid
    assert status["kinds"]["worker"]["leases"][0]["command"] == "sleep 60"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    free = run_tool(["factory-slot", "worker", "--no-wait", "--", "true"], cwd=git_repo, env=slot_env)
    assert free.returncode == 0, free.stderr


def test_a_request_that_does_not_fit_waits_and_one_that_never_fits_is_refused(git_repo, slot_env, tmp_path):
    configure(git_repo, "resources:\n  worker:\n    cpus: 1.5\n    memory: 1g\n")
    env = dict(slot_env, FACTORY_CPUS="2", FACTORY_MEMORY="8g")
    log = tmp_path / "log"
    procs = [launch(git_repo, env, "worker", HOLD.format(log=log, secs=0.5)) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 3
    assert max_concurrency(log) == (1, 3), "two 1.5-CPU workers do not fit on 2 CPUs"
    small = dict(env, FACTORY_MEMORY="512m")
    r = run_tool(["factory-slot", "worker", "--", "true"], cwd=git_repo, env=small)
    assert r.returncode == 69 and "lower resources.worker.memory" in r.stderr


def test_status_counts_held_slots(git_repo, slot_env):
    holders = [subprocess.Popen(["factory-slot", k, "--", "sleep", "30"], cwd=git_repo, env=slot_env)
               for k in ("worker", "worker", "sensor")]
    try:
        deadline = time.monotonic() + 10
        while True:
            s = json.loads(run_tool(["factory-slot", "status"], cwd=git_repo, env=slot_env).stdout)
            if s["total"]["used"] == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert s["total"] == {"size": 8, "used": 3}
        assert s["kinds"]["worker"]["used"] == 2 and s["kinds"]["sensor"]["used"] == 1
        assert s["resources"]["cpus"]["used"] == 2.5
    finally:
        for h in holders:
            os.kill(h.pid, signal.SIGKILL)
            h.wait()
