"""The secret scan of new commits, against a real git repository.

Fixtures are plainly fake and assembled at runtime, so this file adds nothing the scan
itself would flag.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from factory.gitstore import Repo
from factory.redact import Redactor
from factory.secretscan import scan_commits

AWS = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example key id
GH = "gh" + "p_" + "FAKE" * 9
PEM_HEADER = "-----BEGIN " + "OPENSSH PRIVATE KEY-----"
ANT = "sk-" + "ant-FAKE-scan-canary-0000"
ENV = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
           GIT_COMMITTER_EMAIL="t@t", GIT_CONFIG_GLOBAL="/dev/null")


def git(repo, *args, input=None):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=ENV,
                          input=input).stdout.decode().strip()


def commit(repo, message, files=None, remove=()):
    for name, content in (files or {}).items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for name in remove:
        git(repo, "rm", "-q", name)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-F", "-", input=message.encode())
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(git_repo):
    return git_repo


def scan(repo, base, head, environ=None):
    return scan_commits(Repo(repo), base, head, Redactor(environ=environ or {}))


def test_each_kind_of_added_secret_is_found_and_never_shown(repo):
    base = git(repo, "rev-parse", "HEAD")
    c_aws = commit(repo, "add config", {"conf/settings.py": f"REGION = 'eu'\nKEY_ID = '{AWS}'\n"})
    c_msg = commit(repo, f"use the token\n\nit is {GH}\n", {"notes.txt": "nothing here\n"})
    c_pem = commit(repo, "add a deploy key", {"deploy/id": f"{PEM_HEADER}\nAAAAfake\n-----END OPENSSH PRIVATE KEY-----\n"})
    c_tmp = commit(repo, "add then", {"tmp/creds.txt": f"one\ntwo\nthree {ANT}\n"})
    c_del = commit(repo, "remove it again", remove=["tmp/creds.txt"])
    findings = scan(repo, base, c_del)
    got = [(f["commit"], f["path"], f["line"], f["type"], f["where"]) for f in findings]
    assert got == [
        (c_aws, "conf/settings.py", 2, "AWS Access Key", "content"),
        (c_msg, None, None, "GitHub Token", "message"),
        (c_pem, "deploy/id", 1, "Private Key", "content"),
        (c_tmp, "tmp/creds.txt", 3, "Anthropic API Key", "content"),
    ], got
    assert c_del not in {f["commit"] for f in findings}, "a deletion adds nothing"
    text = repr(findings)
    for secret in (AWS, GH, "AAAAfake", ANT):
        assert secret not in text


def test_a_clean_commit_has_no_findings(repo):
    base = git(repo, "rev-parse", "HEAD")
    head = commit(repo, "refactor the parser\n\ncommit 3f9a2b7c1d0e4f5a6b7c8d9e0f1a2b3c4d5e6f70",
                  {"src/parse.py": "def parse(s):\n    return s.split(',')  # sha 0123456789abcdef\n"})
    assert scan(repo, base, head) == []
    assert scan(repo, head, head) == [], "an empty range finds nothing"


def test_names_binaries_merges_renames_and_the_environment(repo):
    base = git(repo, "rev-parse", "HEAD")
    # A secret as a file name: reported, with the name masked.
    c_name = commit(repo, "odd name", {f"keys/{AWS}.txt": ""})
    # A secret inside a binary file (NUL bytes make git call it binary).
    c_bin = commit(repo, "blob", {"data.bin": b"\x00\x01\x02" + AWS.encode() + b"\x00\xff"})
    # Moving a file adds nothing new.
    git(repo, "mv", "README", "README.md")
    c_mv = commit(repo, "rename")
    # A merge whose result holds a line neither parent has.
    git(repo, "checkout", "-q", "-b", "side", c_name)
    c_side = commit(repo, "side work", {"side.txt": "side\n"})
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-commit", "--no-ff", "side")
    (repo / "side.txt").write_text(f"side\nmerged in by hand {GH}\n")
    git(repo, "add", "side.txt")
    git(repo, "commit", "-q", "-m", "merge side")
    c_merge = git(repo, "rev-parse", "HEAD")
    # The host's own API key, committed by mistake.
    c_env = commit(repo, "oops", {"run.sh": f"export ANTHROPIC_API_KEY=\"{ANT}x\"\n"})
    findings = scan(repo, base, c_env, environ={"ANTHROPIC_API_KEY": ANT + "x"})
    by_commit = {}
    for f in findings:
        by_commit.setdefault(f["commit"], []).append((f["path"], f["line"], f["type"], f["where"]))
    assert by_commit[c_name] == [("keys/[REDACTED].txt", None, "AWS Access Key", "name")]
    assert by_commit[c_bin] == [("data.bin", 1, "AWS Access Key", "content")]
    assert c_mv not in by_commit and c_side not in by_commit
    assert by_commit[c_merge] == [("side.txt", 2, "GitHub Token", "content")]
    assert ("run.sh", 1, "Secret From The Environment", "content") in by_commit[c_env]
    assert AWS not in repr(findings) and GH not in repr(findings) and ANT not in repr(findings)


def test_refuses_what_is_not_a_commit(repo):
    with pytest.raises(ValueError):
        scan(repo, "--output=/tmp/x", "HEAD")
    with pytest.raises(ValueError):
        scan(repo, "no-such-ref", "HEAD")
