"""Run records: every agent run leaves refs/factory/runs/<run-id> in the repository.

The record is one commit whose tree holds run.json (the run JSON factory-spawn prints),
transcript.json (the conversation with the model, tool calls and results) and
log-tail.txt (the end of what the run logged). When the agent left commits, the record's
second parent is its last commit, so that work stays reachable from the record even after
its branch moves on. Everything is redacted before it is written.
"""

from __future__ import annotations

import json
import os
import time

from .gitstore import NewCommit, Repo
from .redact import Redactor

RUNS_PREFIX = "refs/factory/runs/"
LOG_TAIL_BYTES = 64 * 1024


def new_run_id() -> str:
    """Sortable by start time, unique without coordination."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(4).hex()


def record(repo: Repo, run: dict, transcript: list, log_tail: str, redactor: Redactor,
           work_commit: str | None = None) -> str:
    """Write the run's record; returns its ref. Runs are never rewritten: creating a
    record that exists fails, so a run cannot be counted twice."""
    run_clean = redactor.clean(run)
    files = {
        "run.json": (json.dumps(run_clean, indent=2, sort_keys=True) + "\n").encode(),
        "transcript.json": (json.dumps(redactor.clean(transcript), indent=1) + "\n").encode(),
        "log-tail.txt": redactor.text(log_tail[-LOG_TAIL_BYTES:]).encode(),
    }
    parents = [work_commit] if work_commit else []
    summary = (f"run {run_clean['run']}: {run_clean['status']}"
               + (f" (issue {run_clean['issue']})" if run_clean.get("issue") else ""))
    (oid,) = repo.write_commits([NewCommit(files, summary + "\n", parents=parents)])
    ref = RUNS_PREFIX + run["run"]
    repo.update_refs([(ref, oid, None)])
    return ref


def load(repo: Repo, run_id: str) -> dict | None:
    blob = repo.cat_batch([f"{RUNS_PREFIX}{run_id}:run.json"])[0]
    return json.loads(blob[2]) if blob else None


def transcript(repo: Repo, run_id: str) -> list | None:
    blob = repo.cat_batch([f"{RUNS_PREFIX}{run_id}:transcript.json"])[0]
    return json.loads(blob[2]) if blob else None
