"""Bad input gets exit 2, a message naming what is wrong, and nothing written: for every
tool, a table of (args, stdin, env) -> a fragment of the message, each checked to leave
every ref as it was and no container behind. Then random input (hypothesis) into the
readers: never a traceback, only the documented codes.

A new tool adds its table here."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from factory.exits import SPAWN_CONFIG
from click.testing import CliRunner
from conftest import BIN

ISSUE = "{ISSUE}"          # replaced by the id of the repository's one open issue
DEEP = "[" * 100_000 + "]" * 100_000
NO_ISSUE = "000000000000"


def refs(repo) -> str:
    return subprocess.run(["git", "-C", str(repo), "for-each-ref"], capture_output=True, text=True,
                          check=True).stdout


def containers(repo) -> list[str]:
    """Containers labelled with this repository (what factory-spawn would have started)."""
    if not shutil.which("docker"):
        return []
    p = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=factory.repo={repo / '.git'}"],
                       capture_output=True, text=True, timeout=30)
    return p.stdout.split()


@pytest.fixture
def repo(git_repo, tool_env):
    p = subprocess.run([os.path.join(BIN, "factory-issue"), "file", "-q"], cwd=git_repo, env=tool_env,
                       input=json.dumps({"title": "a", "fingerprint": "fp:a"}) + "\n", capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    path = RepoPath(git_repo)
    path.issue = json.loads(p.stdout)["id"]
    return path


class RepoPath(type(pathlib.Path())):
    """The test repository's path, with the id of its one open issue."""


def run(repo, env, tool, args, stdin, extra_env=None):
    args = [a.replace(ISSUE, repo.issue) for a in args]
    if isinstance(stdin, str):
        stdin = stdin.replace(ISSUE, repo.issue).encode()
    env = dict(env, **(extra_env or {}))
    return subprocess.run([os.path.join(BIN, tool), *args], cwd=repo, env=env, input=stdin,
                          capture_output=True, timeout=60)


def assert_refused(repo, env, tool, args, stdin, fragment, extra_env=None, files=None, code=2):
    for name, content in (files or {}).items():
        path = repo / name
        if content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_text(content)
    before, boxes = refs(repo), containers(repo)
    p = run(repo, env, tool, args, stdin, extra_env)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == code, (p.returncode, err)
    assert fragment in err, err
    assert "Traceback" not in err
    assert p.stdout == b"", "nothing on stdout"
    assert refs(repo) == before, "a ref moved"
    assert containers(repo) == boxes, "a container was left"
    return err


ISSUE_CASES = [
    # (args, stdin, fragment)
    (["file"], DEEP, "nested more than 64 levels"),
    (["file"], '{"title": "x", "labels": ' + "[" * 70 + "]" * 70 + "}", "nested more than 64 levels"),
    (["file"], b'{"title": "ok"}\n{"title": "caf\xe9"}\n', "stdin line 2: not UTF-8"),
    (["file"], '{"title": "a\\u0000b"}', "title: holds the control character '\\x00'"),
    (["file"], '{"title": "a\\u001b[31mred"}', "title: holds the control character"),
    (["file"], '{"title": "ok", "body": "a\\u0007b"}', "body: holds the control character '\\x07'"),
    (["file"], '{"title": "ok", "labels": ["bug\\n"]}', "labels: label"),
    (["file"], '{"title": "ok", "fingerprint": "a\\u0000"}', "fingerprint: holds the control character"),
    (["file"], '{"title": "ok"}\n{"title": 1}', "stdin line 2: title"),
    (["file"], "not json", "stdin line 1: not JSON"),
    (["file"], '{"title": "x", "priority": NaN}', "NaN is not a JSON number"),
    (["file"], '{"title": "x", "priority": 1e999}', "too large a number"),
    (["file"], '{"title": "x", "priority": ' + "9" * 5000 + "}", "stdin line 1: not JSON that can be used"),
    (["file"], '{"nope": 1}', "nope: is not a field"),
    (["file"], "[]", "issue: must be a JSON object"),
    (["file", "--dedupe"], '{"title": "x", "fingerprint": ""}', "fingerprint: must not be empty"),
    (["list", "-C", "/nonexistent"], None, "'/nonexistent' does not exist"),
    (["file", "-C", "/nonexistent"], '{"title": "x"}', "'/nonexistent' does not exist"),
    (["update", ISSUE, "--branch", "../../../etc"], None, "branch: '../../../etc' is not a branch name"),
    (["update", ISSUE, "--branch", "factory/x.lock"], None, "is not a branch name"),
    (["update", ISSUE, "--branch", "a b"], None, "is not a branch name"),
    (["update", ISSUE, "--branch", "-x"], None, "may not start with '-'"),
    (["update", ISSUE, "--branch", "factory/.hidden"], None, "is not a branch name"),
    (["update", ISSUE, "--branch", "x@{1}"], None, "is not a branch name"),
    (["update", ISSUE, "--title", "a\x07b"], None, "title: holds the control character"),
    (["update"], '{"id": "' + ISSUE + '", "branch": "x..y"}', "branch: 'x..y' is not a branch name"),
    (["update"], DEEP, "nested more than 64 levels"),
    (["update"], b'{"id": "\xff"}', "not UTF-8"),
    (["comment", ISSUE], b"caf\xe9", "line 1 is not UTF-8"),
    (["comment", ISSUE], "a\x00b", "comment: holds the control character '\\x00'"),
    (["comment", ISSUE, "-m", "\x1b[2J"], None, "comment: holds the control character"),
    (["close", ISSUE, "--reason", "a\x01"], None, "comment: holds the control character"),
    (["claim"], DEEP, "nested more than 64 levels"),
    (["show"], b"\xff\xfe", "not UTF-8"),
    (["show", "../../etc"], None, "is not an issue id"),
    (["claim", NO_ISSUE], None, f"no issue '{NO_ISSUE}'"),
]


@pytest.mark.parametrize("args,stdin,fragment", ISSUE_CASES, ids=[f"issue-{n}" for n in range(len(ISSUE_CASES))])
def test_factory_issue_refuses(repo, tool_env, args, stdin, fragment):
    assert_refused(repo, tool_env, "factory-issue", args, stdin, fragment)


def task(**kw):
    return json.dumps({"kind": "worker", "issue": {"id": ISSUE}, **kw})


SPAWN_ENV = {"ANTHROPIC_API_KEY": "sk-ant-test-not-a-key", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
TOO_SMALL = "resources:\n  worker:\n    memory: 1\n"

SPAWN_CASES = [
    # (stdin, fragment, extra env, files written into the work tree first)
    (task(ref="nonexistent-ref"), "ref: 'nonexistent-ref' is not a commit", {}, {}),
    (task(ref="-x"), "is not a rev", {}, {}),
    (task(ref="main\n"), "ref: must be a single line", {}, {}),
    (task(model="claude\x00"), "model: 'claude\\x00' is not a model name", {}, {}),
    (task(model="claude sonnet"), "is not a model name", {}, {}),
    (task(), "FACTORY_MODEL: 'a\\nb' is not a model name", {"FACTORY_MODEL": "a\nb"}, {}),
    (json.dumps({"kind": "sensor", "issue": {"id": "../../etc"}}), "issue", {}, {}),
    (json.dumps({"kind": "sensor", "issue": {"x": 1}}), "a sensor's issue, when given", {}, {}),
    (json.dumps({"kind": "sensor", "issue": "x"}), "a sensor's issue", {}, {}),
    (json.dumps({"kind": "sensor", "sensor": {"name": "a\nb"}}), "sensor.name: must be a single line", {}, {}),
    (json.dumps({"kind": "worker", "issue": {"id": NO_ISSUE}}), f"no issue '{NO_ISSUE}'", {}, {}),
    (task(budgets={"turns": -1}), "budgets.turns", {}, {}),
    ('{"kind": "worker", "issue": {"id": "' + ISSUE + '"}, "budgets": {"cost_usd": Infinity}}',
     "Infinity is not a JSON number", {}, {}),
    (DEEP, "nested more than 64 levels", {}, {}),
    (b'{"kind": "sensor", "ref": "caf\xe9"}', "not UTF-8", {}, {}),
    ("", "the task is empty", {}, {}),
    (task() + task(), "more than one task", {}, {}),
    (task(), "resources.worker.memory: is 1 (1 bytes); it must be at least 64m", {}, {"factory.yaml": TOO_SMALL}),
    (task(), "model.name: 'a\\nb' is not a model name", {}, {"factory.yaml": 'model:\n  name: "a\\nb"\n'}),
    (task(), "image.dockerfile: '../../../etc/passwd' reaches outside", {},
     {"factory.yaml": "image:\n  dockerfile: ../../../etc/passwd\n"}),
    (task(), "image.dockerfile: '/etc/passwd' is absolute", {}, {"factory.yaml": "image:\n  dockerfile: /etc/passwd\n"}),
    (task(), "symlink to a file outside the repository", {}, {"factory.yaml": "->/etc/passwd"}),
    (task(), "nested too deeply to be a config", {}, {"factory.yaml": "[" * 100_000}),
    (task(), "ANTHROPIC_API_KEY is not set", {"ANTHROPIC_API_KEY": ""}, {}),
]


@pytest.mark.parametrize("stdin,fragment,extra_env,files", SPAWN_CASES,
                         ids=[f"spawn-{n}" for n in range(len(SPAWN_CASES))])
def test_factory_spawn_refuses_before_anything_is_claimed_or_started(repo, tool_env, stdin, fragment, extra_env,
                                                                     files):
    # factory.yaml and the API key are the factory's set-up, not the task's: EX_CONFIG
    code = SPAWN_CONFIG if files or "ANTHROPIC_API_KEY" in extra_env else 2
    err = assert_refused(repo, tool_env, "factory-spawn", [], stdin, fragment, dict(SPAWN_ENV, **extra_env), files,
                         code=code)
    assert "root:" not in err, "a file outside the repository was quoted"
    assert not os.path.exists(repo / ".git" / "factory" / "runs") or not os.listdir(repo / ".git" / "factory" / "runs")


FACTORY_CASES = [
    (["status", "-C", "/nonexistent"], None, "'/nonexistent' does not exist"),
    (["issue", "file"], DEEP, "nested more than 64 levels"),  # `factory VERB` passes the code through
    (["cron", "-C", "/nonexistent"], None, "'/nonexistent' does not exist"),
]


@pytest.mark.parametrize("args,stdin,fragment", FACTORY_CASES, ids=[f"factory-{n}" for n in range(len(FACTORY_CASES))])
def test_factory_refuses(repo, tool_env, args, stdin, fragment):
    assert_refused(repo, tool_env, "factory", args, stdin, fragment)


def test_a_config_symlink_inside_the_repository_is_read(repo, tool_env):
    (repo / "conf").mkdir()
    (repo / "conf" / "factory.yaml").write_text(TOO_SMALL)
    (repo / "factory.yaml").symlink_to("conf/factory.yaml")
    assert_refused(repo, tool_env, "factory-spawn", [], task(), "resources.worker.memory",
                   SPAWN_ENV, code=SPAWN_CONFIG)


# -- random input ---------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["title", "body", "labels", "priority", "fingerprint", "source", "trust", "kind", "id",
                         "depends_on", "issue", "ref", "model", "budgets", "sensor", "x"]) | st.text(max_size=8),
        inner, max_size=5),
    max_leaves=12)
inputs = st.one_of(
    json_values.map(lambda v: (json.dumps(v) + "\n").encode()),
    st.lists(json_values, min_size=1, max_size=3).map(lambda vs: "".join(json.dumps(v) + "\n" for v in vs).encode()),
    st.binary(max_size=200),
)
SETTINGS = settings(max_examples=60, deadline=None, database=None,  # leaves no .hypothesis/ behind
                    suppress_health_check=list(HealthCheck))


def invoke(cli, args, data, monkeypatch, repo, env=None):
    """The tool's click command in this process (no interpreter start per example)."""
    monkeypatch.setenv("FACTORY_REPO", str(repo))  # restored after the test; the -C option sets it too
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(cli, args, input=data, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__}: {result.exception}") from result.exception
    return result


def test_random_input_to_file_is_taken_or_refused_never_a_crash(repo, monkeypatch):
    from factory.cmd_issue import cli
    monkeypatch.setenv("FACTORY_ACTOR", "human:test")

    @SETTINGS
    @given(data=inputs)
    def check(data):
        before = refs(repo)
        result = invoke(cli, ["file", "-q"], data, monkeypatch, repo)
        assert result.exit_code in (0, 2), (result.exit_code, result.output)
        if result.exit_code == 2:
            assert refs(repo) == before

    check()


def test_random_input_to_spawn_is_refused_never_a_crash(tmp_path, monkeypatch):
    """Junk is never a task that runs: the repository has no commit and no issue, so even
    junk that happens to be a well-formed task names nothing that exists."""
    from factory.cmd_spawn import cli
    empty = tmp_path / "empty"
    subprocess.run(["git", "init", "-q", str(empty)], check=True)

    @SETTINGS
    @given(data=inputs)
    def check(data):
        before = refs(empty)
        result = invoke(cli, [], data, monkeypatch, empty, env=SPAWN_ENV)
        assert result.exit_code == 2, (result.exit_code, result.output)
        assert refs(empty) == before

    check()
