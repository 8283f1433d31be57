"""`file --dedupe` is one compare-and-swap: a fingerprint an active issue holds is a ref
(refs/factory/fingerprints/<sha256>), taken in the transaction that files the issue and
given back in the one that ends its activity."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

from conftest import ROOT, run_tool

from factory import contracts
from factory.gitstore import Repo
from factory.issues import FINGERPRINTS_PREFIX, IssueStore

FP = "tests/test_io.py::test_read:flaky"

# Each racer gets everything ready (imports, the store, the draft), then waits for the
# go file, so that all of them reach the transaction together.
RACER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from factory import contracts
from factory.gitstore import Repo
from factory.issues import IssueStore
store = IssueStore(Repo(sys.argv[2]))
draft = contracts.validate_draft({"title": "flaky test_read", "fingerprint": sys.argv[3]})
open(sys.argv[4] + "." + str(os.getpid()), "w").close()
while not os.path.exists(sys.argv[4]):
    time.sleep(0.001)
[(issue, filed)] = store.file([draft], "sensor:t", dedupe=True)
print(json.dumps({"id": issue["id"], "filed": filed}))
"""


def fp_refs(repo):
    out = subprocess.run(["git", "-C", str(repo), "for-each-ref", "--format=%(refname)", FINGERPRINTS_PREFIX],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def ref_for(fp):
    return FINGERPRINTS_PREFIX + hashlib.sha256(fp.encode()).hexdigest()


def race(repo, tmp_path, n=8):
    go = str(tmp_path / "go")
    lib = os.path.join(ROOT, "lib")
    procs = [subprocess.Popen([sys.executable, "-c", RACER, lib, str(repo), FP, go],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    deadline = time.monotonic() + 60
    while len([f for f in os.listdir(tmp_path) if f.startswith("go.")]) < n:
        assert time.monotonic() < deadline, "the racers did not get ready"
        time.sleep(0.01)
    open(go, "w").close()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        results.append(json.loads(out))
    for f in os.listdir(tmp_path):
        if f.startswith("go"):
            os.unlink(tmp_path / f)
    return results


def test_eight_processes_racing_file_dedupe_file_exactly_one_issue(git_repo, tmp_path):
    results = race(git_repo, _barrier_dir(tmp_path), 8)
    assert sum(r["filed"] for r in results) == 1, results
    assert len({r["id"] for r in results}) == 1, "every racer names the one issue"
    store = IssueStore(Repo(git_repo))
    assert [i["fingerprint"] for i in store.all()] == [FP]
    assert fp_refs(git_repo) == [ref_for(FP)]

    # Closed, the finding is no longer active: the next filing makes a new issue, once.
    first = results[0]["id"]
    store.close(first, "human:t")
    assert fp_refs(git_repo) == [], "closing gave the fingerprint back"
    again = race(git_repo, _barrier_dir(tmp_path), 8)
    assert sum(r["filed"] for r in again) == 1
    second = again[0]["id"]
    assert second != first
    assert sorted(i["state"] for i in store.all()) == ["closed", "open"]


def _barrier_dir(tmp_path):
    d = tmp_path / "barrier"
    d.mkdir(exist_ok=True)
    return d


def test_concurrent_cli_filers_make_one_issue(git_repo, tool_env):
    line = json.dumps({"title": "disk almost full", "fingerprint": "disk:/var"}) + "\n"
    procs = [subprocess.Popen(["factory-issue", "file", "--dedupe", "-q"], cwd=git_repo, env=tool_env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    outs = [p.communicate(line, timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    assert len({json.loads(o)["id"] for o, _ in outs}) == 1
    assert len(IssueStore(Repo(git_repo)).all()) == 1


def draft(title, fp):
    return contracts.validate_draft({"title": title, "fingerprint": fp})


def test_the_ref_follows_the_issue_through_every_state(git_repo):
    store = IssueStore(Repo(git_repo))
    [(issue, _)] = store.file([draft("a", "fp:a")], "human:t", dedupe=True)
    ref = ref_for("fp:a")
    assert fp_refs(git_repo) == [ref]
    for state in ("claimed", "review", "open"):  # active all along: the ref stays
        store.update(issue["id"], {"state": state}, "human:t")
        assert fp_refs(git_repo) == [ref]
    store.update(issue["id"], {"state": "failed"}, "human:t")
    assert fp_refs(git_repo) == []
    store.update(issue["id"], {"state": "open"}, "human:t")  # reopened: takes it again
    assert fp_refs(git_repo) == [ref]
    assert store.file([draft("a again", "fp:a")], "human:t", dedupe=True)[0][1] is False
    store.update(issue["id"], {"fingerprint": "fp:b"}, "human:t")  # a new fingerprint moves the ref
    assert fp_refs(git_repo) == [ref_for("fp:b")]
    assert store.file([draft("a again", "fp:a")], "human:t", dedupe=True)[0][1] is True


def test_without_dedupe_a_second_issue_does_not_take_a_held_fingerprint(git_repo):
    store = IssueStore(Repo(git_repo))
    (a, _), (b, _) = store.file([draft("a", "fp"), draft("b", "fp")], "human:t")
    assert fp_refs(git_repo) == [ref_for("fp")]
    store.close(b["id"], "human:t")  # b never held it: a still does
    assert fp_refs(git_repo) == [ref_for("fp")]
    assert store.file([draft("c", "fp")], "human:t", dedupe=True)[0][0]["id"] == a["id"]


def test_a_store_without_fingerprint_refs_still_dedupes(git_repo):
    """Issues filed before fingerprint refs existed (or whose ref went missing) are found
    in the listing; a stale ref (its issue closed by hand) is taken over."""
    store = IssueStore(Repo(git_repo))
    [(old, _)] = store.file([draft("old", "fp:old")], "human:t")
    subprocess.run(["git", "-C", str(git_repo), "update-ref", "-d", ref_for("fp:old")], check=True)
    assert store.file([draft("dup", "fp:old")], "human:t", dedupe=True)[0] == (old, False)
    assert fp_refs(git_repo) == [ref_for("fp:old")], "found in the listing, it took its ref"
    store.close(old["id"], "human:t")
    assert fp_refs(git_repo) == []

    [(gone, _)] = store.file([draft("gone", "fp:gone")], "human:t")
    stale = subprocess.run(["git", "-C", str(git_repo), "rev-parse", ref_for("fp:gone")], capture_output=True,
                           text=True).stdout.strip()
    subprocess.run(["git", "-C", str(git_repo), "update-ref", "-d", f"refs/factory/issues/{gone['id']}"], check=True)
    [(new, filed)] = store.file([draft("new", "fp:gone")], "human:t", dedupe=True)
    assert filed and new["id"] != gone["id"]
    now = subprocess.run(["git", "-C", str(git_repo), "rev-parse", ref_for("fp:gone")], capture_output=True,
                         text=True).stdout.strip()
    assert now != stale


def test_pull_brings_fingerprint_refs_with_the_issues(tmp_path, tool_env):
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    for r in (theirs, ours):
        subprocess.run(["git", "init", "-q", str(r)], check=True)
    r = run_tool(["factory-issue", "file"], cwd=theirs, env=tool_env,
                 input=json.dumps({"title": "x", "fingerprint": "fp:pulled"}) + "\n")
    assert r.returncode == 0, r.stderr
    r = run_tool(["factory-issue", "pull", str(theirs)], cwd=ours, env=tool_env)
    assert r.returncode == 0, r.stderr
    assert fp_refs(ours) == [ref_for("fp:pulled")]
    r = run_tool(["factory-issue", "file", "--dedupe"], cwd=ours, env=tool_env,
                 input=json.dumps({"title": "x again", "fingerprint": "fp:pulled"}) + "\n")
    assert r.returncode == 0 and "1 duplicate" in r.stderr
    # closed over there, pulled here: the fingerprint is free again here
    issue_id = json.loads(r.stdout)["id"]
    assert run_tool(["factory-issue", "close", issue_id], cwd=theirs, env=tool_env).returncode == 0
    r = run_tool(["factory-issue", "pull", "--trusted", str(theirs)], cwd=ours, env=tool_env)
    assert r.returncode == 0, r.stderr
    assert fp_refs(ours) == []


def test_a_fingerprint_given_back_and_taken_in_one_transaction_moves_once():
    """One pull can close the issue holding a fingerprint and bring another with it: one
    update of the ref, from the old holder to the new, whichever comes first."""
    from factory.issues import _fingerprint_moves, _Holder
    holder = _Holder("o" * 40, "a" * 12, {"id": "a" * 12, "state": "open", "fingerprint": "X"})
    for changes in ([("a" * 12, "X", None, "1" * 40), ("b" * 12, None, "X", "2" * 40)],
                    [("b" * 12, None, "X", "2" * 40), ("a" * 12, "X", None, "1" * 40)]):
        assert _fingerprint_moves(changes, {"X": holder}) == [(ref_for("X"), "2" * 40, "o" * 40)]
    # alone, the old holder gives it back; a newcomer beside a live holder takes nothing
    assert _fingerprint_moves([("a" * 12, "X", None, "1" * 40)], {"X": holder}) == \
        [(ref_for("X"), "0" * 40, "o" * 40)]
    assert _fingerprint_moves([("b" * 12, None, "X", "2" * 40)], {"X": holder}) == []
