"""Leases on claims: who holds a claimed issue, and when the claim is certainly dead.

A claim carries a lease, `{"owner": {"host", "pid", "since"}, "until"}`: the process that
holds it (since is the process's start time, in clock ticks after boot, so that a pid the
kernel handed to another process is not taken for the owner) and a time by which any run
under it has certainly ended (its wall budget, the container's grace and a margin).
Kubernetes' Lease is the model, without renewals: a run cannot outlive its deadline.

Anyone can judge a lease without asking its owner: on the owner's host, a gone process
ends it at once; elsewhere, `until` does. A dead claim is re-queued once (a
compare-and-swap on the claim's token), without counting an attempt.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone

MARGIN_S = 600  # beyond a run's wall budget and its container's grace


def _since(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def owner(pid: int | None = None) -> dict:
    pid = pid or os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "since": _since(pid)}


def new(seconds: float, pid: int | None = None) -> dict:
    until = datetime.now(timezone.utc) + timedelta(seconds=seconds + MARGIN_S)
    return {"owner": owner(pid), "until": until.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


def dead(issue: dict, now: str | None = None) -> str | None:
    """Why the issue's claim is certainly dead, or None (alive, or not ours to judge)."""
    lease = issue.get("lease")
    if issue.get("state") != "claimed":
        return None
    if not isinstance(lease, dict):
        # A claim made before claims had leases: a supervisor's names its pid, on this
        # host (one supervisor per repository, and the repository is here).
        by = issue.get("claimed_by") or ""
        pid = by.removeprefix("supervisor:")
        if by.startswith("supervisor:") and pid.isdigit() and _since(int(pid)) is None:
            return f"its holder (supervisor {pid}) is gone"
        return None
    now = now or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(lease.get("until"), str) and lease["until"] < now:
        return f"its lease ran out at {lease['until']}"
    who = lease.get("owner") or {}
    if who.get("host") != socket.gethostname() or not isinstance(who.get("pid"), int):
        return None
    since = _since(who["pid"])
    if since is None or (who.get("since") and since != who["since"]):
        return f"its holder (pid {who['pid']}) is gone"
    return None
