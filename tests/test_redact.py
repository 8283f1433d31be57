"""Redaction: secret values from the environment and well-known key formats are masked."""

from __future__ import annotations

from factory.redact import MASK, Redactor


def test_environment_secrets_and_key_patterns_are_masked():
    r = Redactor(environ={"ANTHROPIC_API_KEY": "sk-ant-FAKE-test-canary-only", "MY_TOKEN": "hunter2hunter2",
                          "PATH": "/usr/bin", "SHORT_KEY": "abc"})
    text = ("key sk-ant-FAKE-test-canary-only and hunter2hunter2, aws AKIAIOSFODNN7EXAMPLE, "
            "gh ghp_" + "a" * 36 + ", Authorization: Bearer abcdefghijklmnopqrstuvwx, path /usr/bin, abc")
    out = r.text(text)
    for secret in ("sk-ant-FAKE", "hunter2hunter2", "AKIAIOSFODNN7EXAMPLE", "ghp_", "abcdefghijklmnopqrstuvwx"):
        assert secret not in out, secret
    assert "/usr/bin" in out and out.endswith("abc"), "non-secrets and short values stay"
    assert out.count(MASK) >= 5


def test_private_keys_and_nested_values():
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
    r = Redactor(environ={})
    cleaned = r.clean({"a": [pem, {"b": "sk-ant-zzzzzzzzzzzz"}], "n": 3})
    assert cleaned == {"a": [MASK, {"b": MASK}], "n": 3}


def test_a_secret_containing_another_is_masked_whole():
    r = Redactor(environ={"A_KEY": "abcdefgh", "B_KEY": "abcdefgh12345678"})
    assert r.text("x abcdefgh12345678 y") == f"x {MASK} y"
