"""What the factory-postmortem tests share: a repository whose main passes its test and a
branch that breaks it, a gate verdict refusing that branch (built by hand to the gate's
contract, with the test's real output), and a way to run the tools and read what they
left on a branch."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile

from conftest import BIN
from spawnkit import TEST_CALC, file_issue, git

GOOD = "def add(a, b):\n    return a + b\n"
BAD = "def add(a, b):\n    return a - b\n"
TEST_COMMAND = "python3 -m unittest -q"


def repo_with_refused_branch(path, tool_env):
    """main passes `python3 -m unittest`; factory/<issue> (an agent's branch) breaks it.
    Returns (repo, issue, base, head)."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "calc.py").write_text(GOOD)
    (path / "test_calc.py").write_text(TEST_CALC)
    (path / "intent" / "principles").mkdir(parents=True)
    (path / "intent" / "principles" / "small-changes.md").write_text("# Small changes\n\nKeep changes small.\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "calc")
    issue = file_issue(path, tool_env, title="add() should also take a third argument")
    head = branch_with(path, f"factory/{issue['id']}", BAD)
    return path, issue, git(path, "rev-parse", "main"), head


def branch_with(repo, branch, calc, start="main"):
    """A commit on `branch` (from `start`) that sets calc.py; the work tree ends where it was."""
    was = git(repo, "symbolic-ref", "--short", "HEAD")
    git(repo, "checkout", "-q", "-b", branch, start)
    (repo / "calc.py").write_text(calc)
    git(repo, "commit", "-qam", "an agent's change")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", was)
    return head


def output_of(repo, commit, command=TEST_COMMAND):
    """What `command` prints at the top of `commit`'s tree, and its exit code: the real
    output a gate's check would have seen."""
    with tempfile.TemporaryDirectory() as d:
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit], capture_output=True, check=True).stdout
        tar_path = os.path.join(d, "tree.tar")
        with open(tar_path, "wb") as f:
            f.write(archive)
        with tarfile.open(tar_path) as t:
            t.extractall(os.path.join(d, "tree"), filter="data")
        p = subprocess.run(["bash", "-c", command], cwd=os.path.join(d, "tree"), capture_output=True, text=True)
        return p.returncode, (p.stdout + p.stderr)


def verdict(repo, issue, base, head, *, run="20261202T160000Z-0000aa01", fingerprint="gate:5e1f0c2a9b7d3e41",
            **extra):
    """A refusal as factory-gate prints it, for `head` against `base`."""
    code, output = output_of(repo, head)
    assert code != 0, "the branch must fail its test"
    return {"v": 1, "kind": "gate", "issue": issue["id"], "title": issue["title"], "verdict": "refuse",
            "reason": f"check tests failed: {TEST_COMMAND} exited {code}", "ref": "refs/heads/main",
            "base": base, "head": head, "branch": f"factory/{issue['id']}", "merge": None,
            "checks": [{"name": "tests", "kind": "check", "command": TEST_COMMAND, "path": None, "exit_code": code,
                        "ok": False, "timed_out": False, "output_tail": output, "seconds": 0.4}],
            "detected": "python3 -m unittest: test_*.py at the top", "fingerprint": fingerprint,
            "needs_approval": False, "run": run, "record": f"refs/factory/runs/{run}",
            "started": "2026-12-02T16:00:00Z", "ended": "2026-12-02T16:00:05Z", "settled": True, **extra}


def run_postmortem(repo, env, *inputs, args=(), timeout=600):
    """Run factory-postmortem with JSON lines on stdin: (exit code, output objects, stderr)."""
    data = "".join(json.dumps(i) + "\n" for i in inputs)
    p = subprocess.run([os.path.join(BIN, "factory-postmortem"), *args], cwd=repo, env=env, input=data,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, [json.loads(line) for line in p.stdout.splitlines() if line.strip()], p.stderr


def front_matter(text):
    from factory import intent
    return intent.front_matter(text)


def read_on(repo, rev, path):
    return subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def files_under(repo, rev, prefix):
    out = git(repo, "ls-tree", "-r", "--name-only", rev, "--", prefix)
    return [p for p in out.splitlines() if p and not p.endswith("README.md")]


def refs(repo):
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def issue_show(repo, env, issue_id):
    p = subprocess.run([os.path.join(BIN, "factory-issue"), "show", issue_id], cwd=repo, env=env,
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def no_model(env):
    """The environment with no model: factory-postmortem must write factual postmortems."""
    env = dict(env)
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("ANTHROPIC_BASE_URL", None)
    return env
