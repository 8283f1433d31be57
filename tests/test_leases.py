"""When a claim is certainly dead, judged without asking its holder."""

from __future__ import annotations

import os

from factory import leases

DEAD_PID = 2 ** 22 + 1  # above pid_max: no such process


def claimed(**extra):
    return {"state": "claimed", "claimed_by": "supervisor:1", "lease": None, **extra}


def test_a_live_holder_keeps_its_claim_and_a_gone_one_loses_it():
    assert leases.dead(claimed(lease=leases.new(600))) is None
    gone = leases.new(600)
    gone["owner"]["pid"] = DEAD_PID
    assert "is gone" in leases.dead(claimed(lease=gone))


def test_a_reused_pid_is_not_taken_for_the_holder():
    lease = leases.new(600)
    lease["owner"]["since"] = "1"  # this pid, but a process that started at another time
    assert "is gone" in leases.dead(claimed(lease=lease))


def test_a_lease_past_its_time_is_dead_wherever_its_holder_runs():
    lease = leases.new(0)
    lease["until"] = "2000-01-01T00:00:00.000000Z"
    lease["owner"]["host"] = "elsewhere"
    assert "ran out" in leases.dead(claimed(lease=lease))
    lease["until"] = "2999-01-01T00:00:00.000000Z"
    assert leases.dead(claimed(lease=lease)) is None, "another host's live lease is not ours to judge"


def test_a_claim_from_before_leases_is_judged_by_its_supervisors_pid():
    assert "is gone" in leases.dead(claimed(claimed_by=f"supervisor:{DEAD_PID}"))
    assert leases.dead(claimed(claimed_by=f"supervisor:{os.getpid()}")) is None
    assert leases.dead(claimed(claimed_by="human:ann")) is None
    assert leases.dead({"state": "open", "lease": None}) is None
