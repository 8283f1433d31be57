"""Findings as issues: the finding contract through `factory-issue file`, and the signature
rules (one signature, one issue; done-unverified still a duplicate; a regression after a
verified fix, once, linked to the old issue), concurrency included. No Docker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, run_tool

from factory.gitstore import Repo
from factory.issues import IssueStore

FINDING = {"v": 1, "title": "test_calc.py::T::test_add fails", "body": "add(2, 3) gives -1",
           "severity": "high", "fingerprint": "test:test_calc.py::T::test_add", "source": "sensor:tests",
           "evidence": "E   AssertionError: -1 != 5\n```inside```", "reproduction": "python3 -m pytest -q test_calc.py",
           "target": "main", "commit": None, "run": "20260101T000000Z-0123abcd", "confirmed": None}


def file(repo, env, *objs, args=("--dedupe",)):
    p = run_tool(["factory-issue", "file", *args], cwd=repo, env=env,
                 input="".join(json.dumps(o) + "\n" for o in objs))
    return p, [json.loads(line) for line in p.stdout.splitlines()]


def show(repo, env, issue_id):
    return json.loads(run_tool(["factory-issue", "show", issue_id], cwd=repo, env=env).stdout)


def test_a_finding_files_as_an_issue_with_priority_labels_and_headings(git_repo, tool_env):
    p, (issue,) = file(git_repo, tool_env, FINDING)
    assert p.returncode == 0, p.stderr
    assert issue["priority"] == 1 and issue["source"] == "sensor:tests"
    assert issue["fingerprint"] == "test:test_calc.py::T::test_add"
    assert "severity:high" in issue["labels"] and "target:main" in issue["labels"]
    body = issue["body"]
    assert body.startswith("add(2, 3) gives -1")
    assert "## Evidence\n\n````\nE   AssertionError" in body  # a fence the evidence cannot close
    assert "## Reproduction" in body and "python3 -m pytest -q test_calc.py" in body
    assert "run 20260101T000000Z-0123abcd" in body


def test_a_given_priority_wins_over_the_severity(git_repo, tool_env):
    _, (issue,) = file(git_repo, tool_env, dict(FINDING, priority=4, severity="critical"))
    assert issue["priority"] == 4 and "severity:critical" in issue["labels"]


def test_a_bad_finding_is_refused_and_nothing_is_written(git_repo, tool_env):
    for bad, word in ((dict(FINDING, severity="urgent"), "severity"), (dict(FINDING, source="human"), "source"),
                      (dict(FINDING, spam=1), "spam"), ({k: v for k, v in FINDING.items() if k != "fingerprint"},
                                                        "fingerprint"),
                      (dict(FINDING, target="-x"), "target")):
        p, _ = file(git_repo, tool_env, {"title": "fine"}, bad)
        assert p.returncode == 2 and word in p.stderr and "line 2" in p.stderr, p.stderr
    assert Repo(str(git_repo)).refs("refs/factory/") == {}


def test_one_signature_one_issue_even_once_it_is_done(git_repo, tool_env):
    _, (first,) = file(git_repo, tool_env, FINDING)
    _, (again,) = file(git_repo, tool_env, FINDING)
    assert again["id"] == first["id"]
    assert run_tool(["factory-issue", "close", first["id"], "--as", "done"], cwd=git_repo,
                    env=tool_env).returncode == 0
    p, (still,) = file(git_repo, tool_env, FINDING)  # fixed, not yet verified: still the same issue
    assert still["id"] == first["id"] and still["state"] == "done"
    assert "1 duplicate" in p.stderr
    assert len(json.loads("[" + ",".join(run_tool(["factory-issue", "list"], cwd=git_repo,
                                                  env=tool_env).stdout.split()) + "]")) == 1


def verify(repo, issue_id):
    store = IssueStore(Repo(str(repo)))
    store.update(issue_id, {"state": "closed", "add_labels": ["verified-fixed"]}, "sensor:tests")


def test_a_finding_back_after_a_verified_fix_is_a_regression_linked_to_the_old_issue(git_repo, tool_env):
    _, (first,) = file(git_repo, tool_env, FINDING)
    verify(git_repo, first["id"])
    _, (reg,) = file(git_repo, tool_env, FINDING)
    assert reg["id"] != first["id"] and "regression" in reg["labels"]
    assert f"Regression of issue {first['id']}" in reg["body"]
    old = show(git_repo, tool_env, first["id"])
    assert any(reg["id"] in c["text"] and "regression" in c["text"] for c in old["comments"])
    _, (dup,) = file(git_repo, tool_env, FINDING)  # it returns once
    assert dup["id"] == reg["id"]


def test_a_human_fingerprint_is_not_a_signature(git_repo, tool_env):
    _, (a,) = file(git_repo, tool_env, {"title": "x", "fingerprint": "fp"})
    run_tool(["factory-issue", "close", a["id"], "--as", "done"], cwd=git_repo, env=tool_env)
    _, (b,) = file(git_repo, tool_env, {"title": "x", "fingerprint": "fp"})
    assert b["id"] != a["id"]  # as before: only active issues dedupe a person's fingerprint


FILER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from factory import contracts
from factory.gitstore import Repo
from factory.issues import IssueStore
store = IssueStore(Repo(sys.argv[2]), warn=lambda m: None)
sys.stdin.readline()  # start together
(issue, filed), = store.file([contracts.validate_draft(json.loads(sys.argv[3]))], "sensor:tests", dedupe=True)
print(json.dumps({"id": issue["id"], "filed": filed}))
"""


def race(repo, n=6):
    lib = os.path.join(ROOT, "lib")
    procs = [subprocess.Popen([sys.executable, "-c", FILER, lib, str(repo), json.dumps(FINDING)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return out


def test_concurrent_filers_of_one_signature_file_once_and_one_regression_once(git_repo):
    out = race(git_repo)
    assert sum(o["filed"] for o in out) == 1 and len({o["id"] for o in out}) == 1
    first = out[0]["id"]
    store = IssueStore(Repo(str(git_repo)))
    store.close(first, "test", state="done")  # done: releases the active fingerprint ref
    out = race(git_repo)
    assert not any(o["filed"] for o in out) and {o["id"] for o in out} == {first}
    verify(git_repo, first)
    out = race(git_repo)
    assert sum(o["filed"] for o in out) == 1 and len({o["id"] for o in out}) == 1
    regs = [i for i in store.all() if "regression" in i["labels"]]
    assert len(regs) == 1 and regs[0]["id"] == out[0]["id"]
    comments = [c for c in store.get(first)["comments"] if "regression" in c["text"]]
    assert len(comments) == 1


# -- precision and muting (sense.py), from git alone -------------------------------------

def test_precision_counts_filed_not_useful_and_dropped_and_mutes_a_poor_source(git_repo, tool_env):
    from factory import runs
    from factory.redact import Redactor
    filed = [file(git_repo, tool_env, dict(FINDING, source="sensor:noisy", fingerprint=f"noisy:{n}"))[1][0]
             for n in range(4)]
    for issue in filed[:3]:
        p = run_tool(["factory-issue", "update", issue["id"], "--label", "not-useful"], cwd=git_repo,
                     env=tool_env)
        assert p.returncode == 0, p.stderr
        assert run_tool(["factory-issue", "close", issue["id"]], cwd=git_repo, env=tool_env).returncode == 0
    runs.record(Repo(str(git_repo)), {"run": "20260101T000000Z-00000001", "status": "ok", "kind": "sensor",
                                      "source": "sensor:noisy", "counts": {"dropped": 2}}, [], "", Redactor())
    (git_repo / "factory.yaml").write_text("sensors:\n  noisy:\n    command: 'true'\n")
    p = run_tool(["factory", "status", "--json"], cwd=git_repo, env=tool_env)
    row = json.loads(p.stdout)["sensing"]["sources"]["sensor:noisy"]
    assert (row["filed"], row["not_useful"], row["dropped"]) == (4, 3, 2)
    assert row["precision"] == round(1 / 6, 3) and "muted" in row["muted"]
    p = run_tool(["factory", "status"], cwd=git_repo, env=tool_env)
    assert "source   sensor:noisy: precision 0.17" in p.stdout and "below sense.min_precision 0.5" in p.stdout
    p = run_tool(["factory-sense", "--file"], cwd=git_repo, env=tool_env)  # all enabled: the muted one is skipped
    assert p.returncode == 0 and p.stdout == "" and "sensor:noisy: muted: precision 0.17" in p.stderr
    assert len(Repo(str(git_repo)).refs("refs/factory/runs/")) == 1  # nothing ran


def test_a_sensor_at_work_shows_in_the_status_in_its_own_slot(git_repo, tool_env):
    p = run_tool(["factory-slot", "sensor", "--", "factory", "status", "--json"], cwd=git_repo, env=tool_env)
    at_work = json.loads(p.stdout)["sensing"]["at_work"]
    assert [w["kind"] for w in at_work] == ["sensor"] and "factory status" in at_work[0]["command"]
