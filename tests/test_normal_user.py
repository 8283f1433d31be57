"""factory as it runs on a typical machine: a normal user (uid 1000, in the docker group)
on a repository that user owns, needing root for nothing; and whatever uid owns the
repository, an agent cannot change one byte of it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile

import pytest
from modelserver import ScriptedModel, text
from normaluser import UID, chown_tree
from spawnkit import CANARY_KEY, bash, git, sample_repo

pytestmark = pytest.mark.docker


@pytest.fixture
def users_repo():
    """A repository a normal user made: every file theirs, objects both packed and loose."""
    top = tempfile.mkdtemp(prefix="factory-user-repo-")
    os.chmod(top, 0o755)
    repo = sample_repo(__import__("pathlib").Path(top) / "calc")
    git(repo, "gc", "-q")                                   # packed objects
    (repo / "notes.txt").write_text("a loose object\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-qm", "notes")                     # and loose ones
    chown_tree(top)
    yield repo
    subprocess.run(["rm", "-rf", top])


def objects_snapshot(repo) -> dict:
    """Every file under .git/objects: its bytes' hash, mode and owner."""
    snap = {}
    root = os.path.join(repo, ".git", "objects")
    for top, _, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            with open(path, "rb") as f:
                snap[os.path.relpath(path, root)] = (hashlib.sha256(f.read()).hexdigest(), st.st_mode, st.st_uid)
    return snap


def test_a_normal_user_runs_an_agent_and_no_object_of_their_repository_changes(users_repo, normal_user):
    before = objects_snapshot(users_repo)
    assert any(p.startswith("pack/") for p in before) and any(len(p) == 41 for p in before)
    env = normal_user.env(FACTORY_ACTOR="human:tester", ANTHROPIC_API_KEY=CANARY_KEY)
    filed = normal_user.run(["factory-issue", "file"], cwd=users_repo, env=env,
                            input=json.dumps({"title": "add() subtracts"}) + "\n")
    assert filed.returncode == 0, filed.stderr
    issue = json.loads(filed.stdout)
    attack = ("cd /factory/objects && for f in $(find . -type f); do chmod u+w $f; printf junk >> $f; done; "
              "touch /factory/objects/planted; rm -f /factory/objects/pack/*; echo done-trying")
    script = [
        bash(attack),
        bash("cd /workspace/repo; id -u; sed -i 's/a - b/a + b/' calc.py && git -c user.name=a -c user.email=a@a commit -qam fix && echo fixed"),
        text("done"),
    ]
    with ScriptedModel(script) as api:
        env.update(ANTHROPIC_BASE_URL=api.base_url, FACTORY_MODEL="claude-sonnet-4-5")
        p = normal_user.run(["factory-spawn"], cwd=users_repo, env=env, input=json.dumps(issue) + "\n")
    assert p.returncode == 0, p.stderr + p.stdout
    run = json.loads(p.stdout)
    assert run["status"] == "ok" and run["landed"], run
    assert "Read-only file system" in json.dumps(api.requests[1]["messages"])
    assert f'"content": "{UID}\\nfixed"' in json.dumps(api.requests[2]["messages"]), "the agent ran as uid 1000"
    after = objects_snapshot(users_repo)
    changed = [p for p in before if after.get(p) != before[p]]
    assert changed == [], f"objects changed under the agent: {changed[:5]}"
    fsck = subprocess.run(["git", "-C", str(users_repo), "-c", f"safe.directory={users_repo}", "fsck", "--strict"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    branch = f"factory/{issue['id']}"
    assert "a + b" in git(users_repo, "-c", f"safe.directory={users_repo}", "show", f"{branch}:calc.py")
    # everything factory wrote in the repository belongs to the user, none of it to root
    foreign = [os.path.join(t, n) for t, ds, fs in os.walk(users_repo) for n in ds + fs
               if os.lstat(os.path.join(t, n)).st_uid != UID]
    assert foreign == []
    # The gate and the merge queue, as the same user: main and its work tree move together.
    judged = normal_user.run(["bash", "-c", "factory-issue list --state review | factory-gate -q"],
                             cwd=users_repo, env=env)
    assert judged.returncode == 0 and json.loads(judged.stdout)["verdict"] == "pass", judged.stderr
    merged = normal_user.run(["factory", "merge", issue["id"]], cwd=users_repo, env=env)
    assert merged.returncode == 0, merged.stderr
    assert "a + b" in (users_repo / "calc.py").read_text()
    status = normal_user.run(["git", "status", "--porcelain"], cwd=users_repo, env=env)  # (as root, it
    assert status.returncode == 0 and status.stdout == ""                             # would rewrite the index)
    foreign = [os.path.join(t, n) for t, ds, fs in os.walk(users_repo) for n in ds + fs
               if os.lstat(os.path.join(t, n)).st_uid != UID]
    assert foreign == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can act on another user's repository")
def test_root_on_another_users_repository_is_told_exactly_why_not(users_repo, tool_env):
    p = subprocess.run(["factory-issue", "list"], cwd=users_repo, env=tool_env, capture_output=True, text=True)
    assert p.returncode == 2
    owner = __import__("pwd").getpwuid(UID).pw_name
    assert f"belongs to {owner}, not to you (root)" in p.stderr and f"sudo -u {owner}" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(users_repo, ".git", "refs", "factory", "issues")) or \
        all(os.lstat(os.path.join(t, n)).st_uid == UID
            for t, ds, fs in os.walk(os.path.join(users_repo, ".git")) for n in ds + fs)
