"""The issue store against real git: shape, ids, choosing, claiming, merging clones."""

from __future__ import annotations

import json
import subprocess

import pytest

from factory import contracts
from factory.gitstore import Repo
from factory.issues import IssueStore, NoSuchIssue, NotClaimable, fold


def store_at(path) -> IssueStore:
    return IssueStore(Repo(path))


def draft(**kw):
    return contracts.validate_draft({"title": "t", **kw})


def refs(path):
    out = subprocess.run(["git", "-C", str(path), "for-each-ref", "refs/factory/"],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_filed_issue_has_the_contract_fields(git_repo):
    s = store_at(git_repo)
    (issue, filed), = s.file([draft(title="x", labels=["bug"], priority=1)], "human:a")
    assert filed
    for k in ("v", "id", "title", "state", "labels", "priority", "fingerprint", "source", "trust",
              "attempts", "branch", "runs", "created", "updated", "kind", "comments"):
        assert k in issue
    assert issue["state"] == "open" and issue["labels"] == ["bug"] and issue["priority"] == 1
    assert contracts.ID_RE.match(issue["id"])
    assert s.get(issue["id"]) == json.loads(json.dumps(issue))
    # stored under refs/factory/issues/<id>, the user's branches untouched
    assert any(line.endswith(f"refs/factory/issues/{issue['id']}") for line in refs(git_repo))
    head = subprocess.run(["git", "-C", str(git_repo), "log", "--oneline", "main"], capture_output=True, text=True).stdout
    assert len(head.splitlines()) == 1


def test_ids_are_unique_and_prefixes_resolve(git_repo):
    s = store_at(git_repo)
    issues = [i for i, _ in s.file([draft(title=str(n)) for n in range(300)], "human:a")]
    ids = [i["id"] for i in issues]
    assert len(set(ids)) == 300
    target = ids[0]
    # the shortest prefix of target that no other id shares resolves to it
    for n in range(1, 13):
        if sum(1 for i in ids if i.startswith(target[:n])) == 1:
            assert s.resolve(target[:n]) == target
            break
    ambiguous = next(p for p in (i[:1] for i in ids) if sum(1 for i in ids if i.startswith(p)) > 1)
    with pytest.raises(NoSuchIssue, match="matches"):
        s.resolve(ambiguous)
    with pytest.raises(NoSuchIssue, match="no issue"):
        s.get("ffffffffffff")
    with pytest.raises(NoSuchIssue, match="no issue"):
        s.get("fffff")


def test_history_is_the_git_log_of_the_issue(git_repo):
    s = store_at(git_repo)
    (i, _), = s.file([draft()], "human:a")
    s.claim(i["id"], "worker:1")
    s.update(i["id"], {"state": "review", "branch": "factory/" + i["id"], "add_labels": ["x"]}, "worker:1")
    s.comment(i["id"], "looks good", "human:b")
    types = [e["type"] for e in s.history(i["id"])]
    assert types == ["filed", "claim", "set", "labels", "comment"]
    log = subprocess.run(["git", "-C", str(git_repo), "log", "--format=%s", f"refs/factory/issues/{i['id']}"],
                         capture_output=True, text=True).stdout.split()
    assert log.count("comment") == 1 and "filed" in log
    # the state in every commit is the fold of the events up to it
    assert fold(s.history(i["id"])) == s.get(i["id"])


def test_claim_is_refused_unless_open(git_repo):
    s = store_at(git_repo)
    (i, _), = s.file([draft()], "human:a")
    assert s.claim(i["id"], "worker:1")["claimed_by"] == "worker:1"
    with pytest.raises(NotClaimable, match="claimed by worker:1"):
        s.claim(i["id"], "worker:2")
    s.close(i["id"], "human:a", state="done")
    with pytest.raises(NotClaimable, match="done"):
        s.claim(i["id"], "worker:3")


def test_ready_order_priority_age_dependencies_and_backoff(git_repo):
    s = store_at(git_repo)
    a, b, c = (i for i, _ in s.file([draft(title="a", priority=2), draft(title="b", priority=2),
                                     draft(title="c", priority=0)], "human:x"))
    (d, _), = s.file([draft(title="d", priority=0, depends_on=[a["id"]])], "human:x")
    s.update(b["id"], {"not_before": "2999-01-01T00:00:00Z"}, "human:x")
    assert [i["title"] for i in s.ready(s.all())] == ["c", "a"]
    s.close(a["id"], "human:x", state="done")
    assert [i["title"] for i in s.ready(s.all())] == ["c", "d"]
    s.update(b["id"], {"not_before": None}, "human:x")
    assert [i["title"] for i in s.ready(s.all())] == ["c", "d", "b"]


def test_dedupe_by_fingerprint_against_active_issues(git_repo):
    s = store_at(git_repo)
    (first, _), = s.file([draft(fingerprint="fp1")], "sensor:tests")
    results = s.file([draft(fingerprint="fp1"), draft(fingerprint="fp2"), draft(fingerprint="fp2")],
                     "sensor:tests", dedupe=True)
    assert [filed for _, filed in results] == [False, True, False]
    assert results[0][0]["id"] == first["id"]
    assert results[2][0]["id"] == results[1][0]["id"]
    s.close(first["id"], "human:a")
    (again, filed), = s.file([draft(fingerprint="fp1")], "sensor:tests", dedupe=True)
    assert filed and again["id"] != first["id"]
    assert len(s.all()) == 3


def clone(src, dst):
    subprocess.run(["git", "clone", "-q", str(src), str(dst)], check=True)
    subprocess.run(["git", "-C", str(dst), "fetch", "-q", "origin", "+refs/factory/*:refs/factory/*"], check=True)
    return dst


def test_two_clones_that_changed_one_issue_merge_without_loss(git_repo, tmp_path):
    a = store_at(git_repo)
    (issue, _), = a.file([draft(title="shared", labels=["bug"])], "human:a")
    other = clone(git_repo, tmp_path / "other")
    b = store_at(other)
    # both sides change the same issue while apart
    a.comment(issue["id"], "from a", "human:a")
    a.update(issue["id"], {"add_labels": ["a-label"], "priority": 0}, "human:a")
    b.comment(issue["id"], "from b", "human:b")
    b.update(issue["id"], {"add_labels": ["b-label"], "remove_labels": ["bug"]}, "human:b")
    (filed_in_b, _), = b.file([draft(title="only in b")], "human:b")

    merged = {i["id"]: how for i, how in a.pull(str(other), trusted=True).merged}
    assert merged[issue["id"]] == "merged" and merged[filed_in_b["id"]] == "new"
    got = a.get(issue["id"])
    assert sorted(c["text"] for c in got["comments"]) == ["from a", "from b"]
    assert set(got["labels"]) == {"a-label", "b-label"} and got["priority"] == 0

    # the other side pulls back: both clones now hold the same issue
    assert dict((i["id"], h) for i, h in b.pull(str(git_repo), trusted=True).merged)[issue["id"]] == "fast-forward"
    assert b.get(issue["id"]) == a.get(issue["id"])
    # merging again changes nothing
    assert dict((i["id"], h) for i, h in a.pull(str(other), trusted=True).merged)[issue["id"]] == "up-to-date"
    fsck = subprocess.run(["git", "-C", str(git_repo), "fsck", "--strict"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr


def test_a_failed_transaction_writes_no_ref(git_repo):
    from factory.gitstore import RefConflict
    s = store_at(git_repo)
    (i, _), = s.file([draft()], "human:a")
    before = refs(git_repo)
    with pytest.raises(RefConflict):
        # second update expects a value the ref does not have: the whole transaction fails
        s.repo.update_refs([("refs/factory/issues/aaaaaaaaaaaa", s.repo.resolve("refs/factory/issues/" + i["id"]), None),
                            ("refs/factory/issues/" + i["id"], "1" * 40, "2" * 40)])
    assert refs(git_repo) == before
