"""What the factory-spawn tests share: a sample repository with a bug, an issue about it,
the scripted model, and a way to run factory-spawn as a user would and look at what
it left (branch, record, containers, workspaces)."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import BIN

# An obviously fake key: it must never show up in a container, a record or a log.
CANARY_KEY = "sk-ant-test-CANARY-0123456789abcdefghijklmnop"

CALC = "def add(a, b):\n    return a - b\n"
TEST_CALC = ("import unittest\nfrom calc import add\n\n\nclass T(unittest.TestCase):\n"
             "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\n"
             "if __name__ == '__main__':\n    unittest.main()\n")


def bash(cmd):
    """A scripted model step: one bash tool call."""
    from modelserver import tool_use
    return tool_use("bash", {"command": cmd})


def git(repo, *args, check=True):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check, env=env).stdout.strip()


def sample_repo(path):
    """A repository whose test fails because add() subtracts."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "calc.py").write_text(CALC)
    (path / "test_calc.py").write_text(TEST_CALC)
    (path / "intent" / "principles").mkdir(parents=True)
    (path / "intent" / "principles" / "tests-first.md").write_text("# Tests first\n\nRun the tests before you commit.\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "calc with a bug")
    return path


def file_issue(repo, env, title="add() subtracts instead of adding", **extra):
    line = json.dumps({"title": title, "body": "test_calc.py fails: add(2, 3) gives -1.", **extra})
    p = subprocess.run(["factory-issue", "file"], cwd=repo, env=env, input=line + "\n", capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def spawn_env(tool_env, api, runs_dir, **extra):
    env = dict(tool_env, ANTHROPIC_API_KEY=CANARY_KEY, ANTHROPIC_BASE_URL=api.base_url,
               FACTORY_RUNS_DIR=str(runs_dir), FACTORY_MODEL="claude-sonnet-4-5")
    env.update(extra)
    return env


def spawn(repo, env, task, timeout=300):
    """Run factory-spawn with one task; returns (exit code, run JSON or None, stderr)."""
    p = subprocess.run([os.path.join(BIN, "factory-spawn")], cwd=repo, env=env, input=json.dumps(task) + "\n",
                       capture_output=True, text=True, timeout=timeout)
    run = json.loads(p.stdout) if p.stdout.strip() else None
    return p.returncode, run, p.stderr


def containers_of_run(run_id):
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=factory.run={run_id}"],
                         capture_output=True, text=True).stdout
    return out.split()


def record_file(repo, run_id, name):
    return subprocess.run(["git", "-C", str(repo), "show", f"refs/factory/runs/{run_id}:{name}"],
                          capture_output=True, text=True).stdout


def tool_results(api):
    """Every tool_result text the agent sent back to the model, in order (deduplicated:
    each request repeats the whole conversation)."""
    seen, out = set(), []
    for req in api.requests:
        for m in req["messages"]:
            if m["role"] != "user" or not isinstance(m["content"], list):
                continue
            for b in m["content"]:
                if b.get("type") == "tool_result" and b["tool_use_id"] not in seen:
                    seen.add(b["tool_use_id"])
                    c = b["content"]
                    out.append(c if isinstance(c, str) else json.dumps(c))
    return out


def everything_recorded(repo, run_id):
    return "\n".join(record_file(repo, run_id, n) for n in ("run.json", "transcript.json", "log-tail.txt"))
