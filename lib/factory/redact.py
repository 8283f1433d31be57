"""Redaction: nothing that looks like a secret reaches git, a log or a transcript.

Two nets: the values of secret-looking environment variables of this process (the API
key above all), and patterns of well-known credential formats. Every string recorded
passes through `Redactor.clean` (recursively for JSON-like values).
"""

from __future__ import annotations

import os
import re

MASK = "[REDACTED]"
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
MIN_SECRET_LEN = 8  # shorter values would mask ordinary words
PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"sk-[A-Za-z0-9]{20,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"(?i)\b(bearer|authorization:)\s+[A-Za-z0-9._~+/=\-]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)"),
]


class Redactor:
    def __init__(self, extra_secrets: list[str] | None = None, environ: dict | None = None):
        env = os.environ if environ is None else environ
        values = {v for k, v in env.items() if SECRET_NAME.search(k) and v and len(v) >= MIN_SECRET_LEN}
        values |= {s for s in (extra_secrets or []) if s and len(s) >= MIN_SECRET_LEN}
        # longest first, so a secret containing another is masked whole
        self.values = sorted(values, key=len, reverse=True)

    def text(self, s: str) -> str:
        for v in self.values:
            if v in s:
                s = s.replace(v, MASK)
        for p in PATTERNS:
            s = p.sub(MASK, s)
        return s

    def clean(self, value):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.clean(v) for v in value]
        if isinstance(value, dict):
            return {k: self.clean(v) for k, v in value.items()}
        return value
