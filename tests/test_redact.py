"""Redaction: secret values from the environment and well-known key formats are masked,
in keys as well as values, at any depth, and in what gets written to a run record.

Every secret-shaped fixture is plainly fake and built at runtime from pieces, so this file
holds nothing a secret scan of its own commits would flag.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

from factory.redact import MASK, Redactor, find_secrets

# Plainly fake, assembled here so that no line of this file is secret-shaped.
ANT = "sk-" + "ant-FAKE-test-canary-only"
AWS = "AKIA" + "IOSFODNN7EXAMPLE"                      # AWS's documented example key id
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"  # AWS's documented example secret
GH = "gh" + "p_" + "a" * 36
SLACK = "xo" + "xb-" + "1234567890-0987654321-fakefakefakefake"
STRIPE = "sk_" + "live_" + "0" * 24
BEARER = "abcdefgh" + "ijklmnopqrstuvwx"
PASSWORD = "hunter2" + "hunter2"
DB_URL = "https://bob:" + PASSWORD + "@db.example.com/x"
PEM = ("-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAfake\nfakefakefake\n"
       "-----END " + "RSA PRIVATE KEY-----")


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


JWT = _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64({"sub": "fake"}) + ".c2lnbmF0dXJlLWZha2U"


def test_environment_secrets_and_key_patterns_are_masked():
    r = Redactor(environ={"ANTHROPIC_API_KEY": ANT, "MY_TOKEN": "hunter2hunter2",
                          "PATH": "/usr/bin", "SHORT_KEY": "abc"})
    text = (f"key {ANT} and hunter2hunter2, aws {AWS}, "
            f"gh {GH}, Authorization: Bearer {BEARER}, path /usr/bin, abc")
    out = r.text(text)
    for secret in ("sk-ant-FAKE", "hunter2hunter2", AWS, "ghp_", "abcdefghijklmnopqrstuvwx"):
        assert secret not in out, secret
    assert "/usr/bin" in out and out.endswith("abc"), "non-secrets and short values stay"
    assert out.count(MASK) >= 5


def test_private_keys_and_nested_values():
    r = Redactor(environ={})
    cleaned = r.clean({"a": [PEM, {"b": "sk-" + "ant-zzzzzzzzzzzz"}], "n": 3})
    assert cleaned == {"a": [MASK, {"b": MASK}], "n": 3}


def test_a_secret_containing_another_is_masked_whole():
    r = Redactor(environ={"A_KEY": "abcdefgh", "B_KEY": "abcdefgh12345678"})
    assert r.text("x abcdefgh12345678 y") == f"x {MASK} y"


def test_secrets_used_as_dict_keys_are_masked_and_kept_apart():
    r = Redactor(environ={"ANTHROPIC_API_KEY": ANT})
    call = {"type": "tool_use", "name": "bash",
            "input": {AWS: "x", GH: {ANT: [1, (STRIPE, "ok")]}, "command": "ls"}}
    cleaned = r.clean(call)
    dumped = json.dumps(cleaned)
    for secret in (AWS, GH, ANT, STRIPE):
        assert secret not in dumped, secret
    inp = cleaned["input"]
    assert inp["command"] == "ls" and len(inp) == 3, "two masked keys must not collapse into one"
    assert sorted(v for v in inp.values() if isinstance(v, str)) == ["ls", "x"]
    assert inp[MASK] == "x" and inp[MASK + "#2"] == {MASK: [1, [MASK, "ok"]]}


def test_secrets_inside_json_strings_are_masked_even_when_escaped():
    quoted = 'pa"ss\\word-1234'  # a value JSON escapes: a quote and a backslash
    r = Redactor(environ={"DB_PASSWORD": quoted})
    inner = json.dumps({GH: quoted, "pem": PEM, "url": DB_URL})
    twice = json.dumps({"stdout": inner})
    for s in (inner, twice):
        out = r.text(s)
        for secret in (GH, "ss\\", 'pa\\"ss', "MIIEow", "fakefakefake", "hunter2hunter2"):
            assert secret not in out, (secret, out)
        assert "bob:" in out and "@db.example.com" in out, "a basic-auth URL keeps its user and host"
    assert quoted not in r.text(f"raw {quoted} end")


def test_well_known_formats_are_found_with_their_type():
    text = "\n".join([f"aws_secret_access_key = '{AWS_SECRET}'", SLACK, STRIPE, JWT, PEM,
                      DB_URL])
    types = {s.type for s in find_secrets(text)}
    assert types >= {"AWS Access Key", "Slack Token", "Stripe Access Key", "JSON Web Token",
                     "Private Key", "Basic Auth Credentials"}, types
    out = Redactor(environ={}).text(text)
    for secret in (AWS_SECRET, SLACK, STRIPE, JWT, "MIIEow", PASSWORD):
        assert secret not in out, secret


def test_ordinary_hashes_and_ids_stay_readable():
    ordinary = ("commit 3f9a2b7c1d0e4f5a6b7c8d9e0f1a2b3c4d5e6f70, run 20261202T132700Z-1a2b3c4d, "
                "issue 7f3a9c0d1e2b, sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855, "
                "a base64 blob aGVsbG8gd29ybGQsIHRoaXMgaXMgbm90IGEgc2VjcmV0Cg==, token = self._token")
    assert Redactor(environ={}).text(ordinary) == ordinary


def test_a_megabyte_transcript_is_redacted_quickly():
    """The figure quoted in redact.py's docstring: a transcript of ordinary code output."""
    here = os.path.dirname(os.path.abspath(__file__))
    source = "".join(open(os.path.join(here, "..", "lib", "factory", f), encoding="utf-8").read()
                     for f in sorted(os.listdir(os.path.join(here, "..", "lib", "factory"))) if f.endswith(".py"))
    transcript, size, i = [], 0, 0
    while size < 1_000_000:
        chunk = source[(i * 499) % (len(source) - 500):][:500] + f" #{i}"
        turn = [{"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i:08x}", "name": "bash",
                                                   "input": {"command": f"sed -n {i},{i + 20}p lib/x.py"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i:08x}",
                                              "content": chunk if i % 10 else json.dumps({"out": chunk})}]}]
        transcript += turn
        size += len(json.dumps(turn))
        i += 1
    transcript[7]["content"][0]["content"] += f" {AWS} "
    r = Redactor(environ={"ANTHROPIC_API_KEY": ANT})
    r.text("warm up: load the detectors")
    t0 = time.perf_counter()
    cleaned = r.clean(transcript)
    elapsed = time.perf_counter() - t0
    assert AWS not in json.dumps(cleaned)
    assert elapsed < 1.0, f"redacting 1 MB took {elapsed:.2f} s"


def test_a_run_record_holds_no_secret_in_keys_values_or_log(tmp_path):
    from factory import runs
    from factory.gitstore import Repo
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    repo = Repo(tmp_path)
    r = Redactor(environ={"ANTHROPIC_API_KEY": ANT})
    run = {"run": "20261202T000000Z-0badc0de", "status": "ok", "issue": None, "reason": f"saw {GH}"}
    transcript = [{"role": "assistant", "content": [{"type": "tool_use", "name": "bash",
                                                     "input": {AWS: ANT, "command": json.dumps({GH: 1})}}]}]
    ref = runs.record(repo, run, transcript, f"log line with {ANT} and {SLACK}\n", r)
    tree = subprocess.run(["git", "-C", str(tmp_path), "ls-tree", "-r", "--name-only", ref],
                          capture_output=True, text=True, check=True).stdout.split()
    written = subprocess.run(["git", "-C", str(tmp_path), "log", "--format=%B", ref],
                             capture_output=True, text=True, check=True).stdout
    for name in tree:
        written += subprocess.run(["git", "-C", str(tmp_path), "show", f"{ref}:{name}"],
                                  capture_output=True, text=True, check=True).stdout
    assert set(tree) == {"run.json", "transcript.json", "log-tail.txt"}
    for secret in (AWS, ANT, GH, SLACK):
        assert secret not in written, secret
    assert "20261202T000000Z-0badc0de" in written and MASK in written
