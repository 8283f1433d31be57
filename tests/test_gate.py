"""factory-gate: verdicts on the merge result, in a real container, put on the issue."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import run_tool
from spawnkit import CALC, file_issue, git, sample_repo

FIXED = "def add(a, b):\n    return a + b\n"
NO_TEST_DELETION = ("---\ncheck: test -z \"$(git diff --name-only --diff-filter=D \"$FACTORY_BASE\" "
                    "HEAD)\"\n---\n# No test is deleted\n\nA failing test is fixed, never removed.\n")


@pytest.fixture
def repo(tmp_path, tool_env):
    r = sample_repo(tmp_path / "repo")
    (r / "factory.yaml").write_text("budgets:\n  attempts: 2\n  retry_backoff_seconds: 0\n")
    (r / "intent" / "prohibitions").mkdir(parents=True)
    (r / "intent" / "prohibitions" / "no-test-deletion.md").write_text(NO_TEST_DELETION)
    git(r, "add", "-A")
    git(r, "commit", "-qm", "config and a prohibition")
    return r


def in_review(repo, env, files: dict, *, message="work", **issue_fields):
    """An issue in review whose branch (from main) changes `files` (None deletes)."""
    issue = file_issue(repo, env, **issue_fields)
    branch = f"factory/{issue['id']}"
    git(repo, "checkout", "-qb", branch)
    for path, text in files.items():
        if text is None:
            git(repo, "rm", "-q", path)
        else:
            (repo / path).write_text(text)
            git(repo, "add", path)
    git(repo, "commit", "-qm", message, "--allow-empty")
    git(repo, "checkout", "-q", "main")
    p = run_tool(["factory-issue", "update", issue["id"], "--state", "review", "--branch", branch],
                 cwd=repo, env=env)
    assert p.returncode == 0, p.stderr
    return issue["id"]


def gate(repo, env, *args):
    p = run_tool(["factory-gate", "-q", *args], cwd=repo, env=env, timeout=300, input="")
    verdicts = [json.loads(line) for line in p.stdout.splitlines()]
    return p, verdicts


def show(repo, env, issue_id):
    return json.loads(run_tool(["factory-issue", "show", issue_id], cwd=repo, env=env).stdout)


docker = pytest.mark.docker


@docker
def test_a_real_fix_passes_and_stays_in_review(repo, tool_env):
    main_before = git(repo, "rev-parse", "main")
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED})
    p, (v,) = gate(repo, tool_env, issue_id)
    assert p.returncode == 0, p.stderr
    assert v["verdict"] == "pass" and v["merge"] == v["head"]  # main can fast-forward to it
    assert v["detected"].startswith("detected: Python")
    names = {c["kind"]: c for c in v["checks"]}
    assert names["check"]["ok"] and names["prohibition"]["ok"] and names["prohibition"]["path"].endswith(
        "no-test-deletion.md")
    issue = show(repo, tool_env, issue_id)
    assert issue["state"] == "review" and issue["verdict"]["verdict"] == "pass"
    assert issue["verdict"]["head"] == v["head"] and issue["attempts"] == 0
    assert git(repo, "rev-parse", "main") == main_before  # judging never merges
    record = git(repo, "show", f"{v['record']}:run.json")
    assert json.loads(record)["verdict"] == "pass"


@docker
def test_a_claimed_fix_that_fails_is_refused_then_failed(repo, tool_env):
    issue_id = in_review(repo, tool_env, {"calc.py": CALC + "# fixed, honestly\n"})
    p, verdicts = gate(repo, tool_env)  # no ids, and nothing on stdin
    assert p.returncode == 2 and "no issue to judge" in p.stderr and verdicts == []
    p = subprocess.run(f"factory-issue list --state review | factory-gate -q", shell=True, cwd=repo, env=tool_env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    (v,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert v["verdict"] == "refuse" and v["fingerprint"].startswith("gate:")
    failing = [c for c in v["checks"] if not c["ok"]]
    assert failing[0]["kind"] == "check" and failing[0]["exit_code"] != 0
    assert "AssertionError" in failing[0]["output_tail"]
    issue = show(repo, tool_env, issue_id)
    assert issue["state"] == "open" and issue["attempts"] == 1
    assert "AssertionError" in issue["comments"][-1]["text"] and failing[0]["command"] in issue["comments"][-1]["text"]
    # The same false claim again: the same root cause, and past budgets.attempts (2) it fails.
    git(repo, "branch", "-f", f"factory/{issue_id}", f"factory/{issue_id}")
    run_tool(["factory-issue", "update", issue_id, "--state", "review"], cwd=repo, env=tool_env)
    _, (again,) = gate(repo, tool_env, issue_id)
    assert again["fingerprint"] == v["fingerprint"] and again["run"] != v["run"]
    assert show(repo, tool_env, issue_id)["state"] == "failed"
    assert git(repo, "show", "main:calc.py") == CALC.strip()  # main's code never changed


@docker
def test_deleting_the_test_is_refused_by_the_prohibition(repo, tool_env):
    issue_id = in_review(repo, tool_env, {"test_calc.py": None})
    _, (v,) = gate(repo, tool_env, issue_id)
    assert v["verdict"] == "refuse"
    failing = [c for c in v["checks"] if not c["ok"]]
    assert [c["kind"] for c in failing] == ["prohibition"], failing
    assert failing[0]["path"] == "intent/prohibitions/no-test-deletion.md"
    assert "no-test-deletion.md" in v["reason"]
    assert "no-test-deletion.md" in show(repo, tool_env, issue_id)["comments"][-1]["text"]


@docker
@pytest.mark.parametrize("path", ["factory.yaml", "intent/prohibitions/no-test-deletion.md",
                                  "intent/principles/tests-first.md"])
@docker
def test_changing_what_judges_the_branch_is_refused_unless_approved(repo, tool_env, path):
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED, path: "check: true\n"})
    _, (v,) = gate(repo, tool_env, issue_id, "--no-settle")
    assert v["verdict"] == "refuse"
    policy = [c for c in v["checks"] if c["kind"] == "policy" and not c["ok"]]
    assert policy and path in policy[0]["output_tail"] and "factory approve" in policy[0]["output_tail"]
    assert not [c for c in v["checks"] if c["kind"] == "check"]  # refused before any check ran
    assert show(repo, tool_env, issue_id)["state"] == "review"  # --no-settle changed nothing


@docker
def test_a_lesson_from_the_postmortem_may_change_the_intent_layer(repo, tool_env):
    issue_id = in_review(repo, tool_env, {"intent/principles/run-the-tests.md": "# Run the tests\n"},
                         source="postmortem:abc123")
    _, (v,) = gate(repo, tool_env, issue_id, "--no-settle")
    policy = [c for c in v["checks"] if c["kind"] == "policy"]
    assert policy[0]["ok"] and "(a lesson)" in policy[0]["output_tail"]
    # main's own test still fails (nobody fixed add()): that, and only that, refuses it
    assert [c["kind"] for c in v["checks"] if not c["ok"]] == ["check"]


@docker
def test_approval_holds_for_the_approved_head_only(repo, tool_env):
    from factory.gitstore import Repo
    from factory.issues import IssueStore, make_event
    from factory import contracts
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED, "factory.yaml": "merge: manual\n"})
    store = IssueStore(Repo(str(repo)))
    head = git(repo, "rev-parse", f"factory/{issue_id}")
    store.change(issue_id, lambda cur, last: [make_event("set", "human:t", after=last, fields={
        "approved": {"by": "human:t", "at": contracts.now_iso(), "head": head}})])
    _, (v,) = gate(repo, tool_env, issue_id, "--no-settle")
    assert v["verdict"] == "pass", v["reason"]
    git(repo, "checkout", "-q", f"factory/{issue_id}")
    (repo / "factory.yaml").write_text("merge: auto\n")
    git(repo, "commit", "-qam", "more")
    git(repo, "checkout", "-q", "main")
    _, (v,) = gate(repo, tool_env, issue_id, "--no-settle")
    assert v["verdict"] == "refuse" and "factory.yaml" in v["reason"] + json.dumps(v["checks"])


@docker
def test_untrusted_work_waits_for_approval_uncharged(repo, tool_env):
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED}, source="peer:other", trust="untrusted")
    p, (v,) = gate(repo, tool_env, issue_id)
    assert p.returncode == 1
    assert v["verdict"] == "refuse" and v["needs_approval"] and v["fingerprint"] is None
    issue = show(repo, tool_env, issue_id)
    assert issue["state"] == "review" and issue["attempts"] == 0 and issue["verdict"]["needs_approval"]


@docker
def test_no_work_and_conflicts_are_refused(repo, tool_env):
    empty = in_review(repo, tool_env, {}, message="nothing")
    _, (v,) = gate(repo, tool_env, empty, "--no-settle")
    assert v["verdict"] == "refuse" and "no work" in v["reason"]
    conflicting = in_review(repo, tool_env, {"calc.py": FIXED})
    (repo / "calc.py").write_text("def add(a, b):\n    return b + a\n")
    git(repo, "commit", "-qam", "main fixes it another way")
    _, (v,) = gate(repo, tool_env, conflicting)
    assert v["verdict"] == "refuse" and v["checks"][-1]["kind"] == "merge" and "calc.py" in v["reason"]
    assert "calc.py" in show(repo, tool_env, conflicting)["comments"][-1]["text"]


@docker
def test_the_merge_result_is_judged_not_the_branch_alone(repo, tool_env):
    """The branch passes on its own; merged with what main gained since, it fails."""
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED + "\n\ndef sub(a, b):\n    return a + b\n"})
    (repo / "test_sub.py").write_text("import unittest\nfrom calc import sub\n\n\nclass S(unittest.TestCase):\n"
                                      "    def test_sub(self):\n        self.assertEqual(sub(5, 3), 2)\n")
    git(repo, "add", "test_sub.py")
    git(repo, "commit", "-qm", "main gains a test of sub")
    _, (v,) = gate(repo, tool_env, issue_id, "--no-settle")
    assert v["merge"] != v["head"] and v["base"] == git(repo, "rev-parse", "main")
    assert git(repo, "rev-parse", f"{v['merge']}^1") == v["base"]
    assert git(repo, "rev-parse", f"{v['merge']}^2") == v["head"]
    assert v["verdict"] == "refuse" and "test_sub" in json.dumps(v["checks"])


# -- no Docker needed -------------------------------------------------------------------

@pytest.mark.parametrize("files,expected", [
    ({"Makefile": "all:\n\ttrue\ntest:\n\ttrue\n", "setup.py": ""}, "make test"),
    ({"package.json": '{"scripts": {"test": "jest"}}'}, "npm test"),
    ({"package.json": '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}'}, None),
    ({"Cargo.toml": "[package]\n"}, "cargo test"),
    ({"go.mod": "module x\n"}, "go test ./..."),
    ({"pyproject.toml": "[project]\n"}, "pytest"),
    ({"tests/test_x.py": ""}, "discover -s tests"),
    ({"README": "hi\n"}, None),
])
def test_the_test_command_is_detected_in_order(tmp_path, files, expected):
    from factory.gate import detect_test_command
    from factory.gitstore import Repo
    r = tmp_path / "r"
    subprocess.run(["git", "init", "-q", "-b", "main", str(r)], check=True)
    for path, text in files.items():
        (r / path).parent.mkdir(parents=True, exist_ok=True)
        (r / path).write_text(text)
    git(r, "add", "-A")
    git(r, "commit", "-qm", "x")
    command, why = detect_test_command(Repo(str(r)), "HEAD")
    if expected is None:
        assert command is None and "gate.checks" in why
    else:
        assert expected in command, (command, why)



@docker
def test_what_the_checks_print_is_redacted_everywhere_the_verdict_goes(repo, tool_env):
    token = "ghp_" + "A1b2C3d4" * 4 + "E5f6"
    leaky = ("import unittest\n\n\nclass L(unittest.TestCase):\n    def test_leak(self):\n"
             "        self.fail('gh' + 'p_' + 'A1b2C3d4' * 4 + 'E5f6')\n")
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED, "test_leak.py": leaky})
    p, (v,) = gate(repo, tool_env, issue_id)
    assert v["verdict"] == "refuse" and "test_leak" in json.dumps(v["checks"])
    assert token not in p.stdout and token not in p.stderr
    assert token not in git(repo, "show", f"{v['record']}:run.json") + git(repo, "show", f"{v['record']}:log-tail.txt")
    assert token not in json.dumps(show(repo, tool_env, issue_id))


@docker
def test_terminal_escapes_and_control_bytes_in_the_output_never_reach_the_issue(repo, tool_env):
    from factory import contracts
    noisy = ("import sys, unittest\n\n\nclass N(unittest.TestCase):\n    def test_noise(self):\n"
             "        sys.stderr.write('\\x1b[31mred\\x1b[0m\\x00\\x07 bell\\r\\n')\n        self.fail('noisy')\n")
    issue_id = in_review(repo, tool_env, {"calc.py": FIXED, "test_noise.py": noisy})
    _, (v,) = gate(repo, tool_env, issue_id)
    assert v["verdict"] == "refuse"
    comment = show(repo, tool_env, issue_id)["comments"][-1]["text"]
    assert "red" in comment and "\x1b" not in comment and "\x00" not in comment
    contracts.validate_comment(comment)  # what a peer pulling this issue checks


def test_the_files_a_check_runs_are_protected_like_the_checks_themselves():
    from factory.gate import protected_paths
    base_files = {"scripts/check.sh", "Makefile", "calc.py", "intent/principles/a.md"}
    changed = ["scripts/check.sh", "calc.py", "intent/principles/a.md", "factory.yaml", "docs/x.md", "Makefile"]
    got = protected_paths(changed, base_files, ["bash ./scripts/check.sh --strict", "python3 -m pytest -q"])
    assert got == ["scripts/check.sh", "intent/principles/a.md", "factory.yaml"]
    assert "Makefile" in protected_paths(changed, base_files, ["make -f Makefile test"])
    assert protected_paths(["calc.py"], base_files, ["echo 'unbalanced"]) == []  # shlex fails: words split
