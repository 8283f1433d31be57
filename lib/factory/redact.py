"""Redaction: nothing that looks like a secret reaches git, a log or a transcript.

This module owns the secret detectors of factory: the redactor masks what they find in
everything recorded, and `secretscan` uses the same `find_secrets` on an agent's commits.

Two nets:

- Values: the values of this process's secret-looking environment variables (the API key
  above all), plus any extra secrets a caller names. Each is also masked in its
  JSON-escaped forms, since a transcript holds tool output that is itself JSON.
- Formats: the detectors of detect-secrets (a maintained scanner) for well-known
  credential formats, plus three formats it does not know (`EXTRA_FORMATS`).

Which detect-secrets plugins, and why (`PLUGINS` lists them): every regex-based plugin for a
named credential format (AWS, GitHub, GitLab, Slack, Stripe, Twilio, SendGrid, JWT, private
keys, basic-auth URLs, npm, PyPI, Azure, Discord, Telegram, Mailchimp, Square, OpenAI,
Artifactory, and the URL forms of Cloudant and SoftLayer). Left out:

- `HexHighEntropyString` and `Base64HighEntropyString`: they mask commit ids, hex run and
  issue ids, checksums and base64 test data, the very things a reader of a transcript needs.
- `KeywordDetector`, and the `name = value` patterns of the IBM, SoftLayer and Cloudant
  plugins (so IBM's two plugins contribute nothing): they mask the right-hand side of any
  `password = ...` or `api_key: ...`, which in a coding agent's transcript is mostly code
  (`token = self._token`), and each costs ~0.1 s per MB.
- `IPPublicDetector`: an address is not a credential, and hiding it hides the evidence.

Only the plugins' patterns are used (`denylist`, and JWT's shape check): never their
`verify`, which would send a found secret over the network to check it.

A private key is masked from its BEGIN line to its END line (to the end of the text when
there is none: a cut-off key is still a key). Where a pattern captures the secret in a
group (basic auth's password, AWS's secret key) only the group is masked, so
`https://user:[REDACTED]@host` stays readable.

Speed, on this project's 2-core machine: `clean` of a 1 MB transcript (~1,900 tool calls
and results over this package's own source, which holds every detector's hint, so every
regex runs) takes 0.27-0.32 s; one 1 MB string of the same text 0.5 s, the worst case;
text holding no hint (most tool output) runs only the three unhinted regexes, ~0.1 s per MB.
tests/test_redact.py::test_a_megabyte_transcript_is_redacted_quickly holds it under 1 s.
Loading detect-secrets costs ~0.25 s once (most of it `requests`, which docker-py loads
anyway), so it happens at the first redaction, not at import.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass

MASK = "[REDACTED]"
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
MIN_SECRET_LEN = 8  # shorter values would mask ordinary words
# No format we detect fits in fewer characters (but a URL with a one-character password):
# the dict keys and short words that make up most of a transcript's strings skip the scan.
MIN_SCAN_LEN = 8
CACHE_MAX_LEN = 256  # short strings repeat (keys, tool names): remember their redaction
CACHE_ENTRIES = 4096

# (module, class) in detect_secrets.plugins, each with hints: strings of which every match
# of the plugin's patterns contains at least one, so that a text holding none of them skips
# the plugin's regexes (a substring test runs at memory speed, these regexes at 10-50 MB/s).
# A hint in lowercase is looked for regardless of case, one with a capital exactly.
# None: always run. See the module docstring for what is left out.
PLUGINS = [
    ("artifactory", "ArtifactoryDetector", ("AKC",) + tuple("AP" + c for c in "0123456789ABCDEF")),
    ("aws", "AWSKeyDetector", ("akia", "abia", "acca", "asia", "a3t", "aws")),
    ("azure_storage_key", "AzureStorageKeyDetector", ("accountkey=",)),
    ("basic_auth", "BasicAuthDetector", ("://",)),
    ("cloudant", "CloudantDetector", ("cloudant",)),
    ("discord", "DiscordBotTokenDetector", None),
    ("github_token", "GitHubTokenDetector", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("gitlab_token", "GitLabTokenDetector", ("gl", "gr1348941")),
    ("jwt", "JwtTokenDetector", ("eyj",)),
    ("mailchimp", "MailchimpDetector", tuple(f"-us{d}" for d in range(10))),
    ("npm", "NpmDetector", ("_authtoken",)),
    ("openai", "OpenAIDetector", ("t3blbkfj",)),
    ("private_key", "PrivateKeyDetector", ("private key", "putty-user-key")),
    ("pypi_token", "PypiTokenDetector", ("pypi-",)),
    ("sendgrid", "SendGridDetector", ("sg.",)),
    ("slack", "SlackDetector", ("xox", "hooks.slack.com")),
    ("softlayer", "SoftlayerDetector", ("softlayer",)),
    ("square_oauth", "SquareOAuthDetector", ("sq0csp-",)),
    ("stripe", "StripeDetector", ("k_live_",)),
    ("telegram_token", "TelegramBotTokenDetector", tuple(f"{d}:" for d in range(10))),
    ("twilio", "TwilioKeyDetector", None),
]

# Types whose patterns capture the secret itself in their groups (basic auth's password,
# AWS's secret key next to the word aws): only the group is masked. Elsewhere a group can
# be a mere prefix (GitLab's `(glpat|...)-`), so the whole match is masked.
GROUP_IS_SECRET = {"Basic Auth Credentials", "AWS Access Key", "Cloudant Credentials",
                   "SoftLayer Credentials", "NPM tokens", "Authorization Header"}

# Patterns of the form `name = value` (detect-secrets' build_assignment_regex, as used by the
# IBM, SoftLayer and Cloudant plugins) are keyword detection: left out for the reasons
# KeywordDetector is, and each costs ~0.1 s per MB.
_ASSIGNMENT = "(?:(?<=\\W)|(?<=^))"

# Formats detect-secrets 1.5 does not know.
EXTRA_FORMATS = [
    ("Anthropic API Key", re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"), ("sk-ant-",)),
    ("GitHub Token", re.compile(r"github_pat_[A-Za-z0-9_]{30,}"), ("github_pat_",)),
    ("Authorization Header", re.compile(r"(?i)\b(?:bearer|authorization:)\s+([A-Za-z0-9._~+/=\-]{16,})"),
     ("bearer", "authorization:")),
]

PRIVATE_KEY = "Private Key"
ENV_SECRET = "Secret From The Environment"  # the value of a secret-named variable here
# Where a private key block ends; PuTTY files have no END line but end with their MAC.
_KEY_END = r"(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|Private-MAC: *[0-9A-Fa-f]+|\Z)"
# Leftovers of a boundary that some plugins' patterns include in the match.
_EDGE = " \t\r\n\"'=:"


@dataclass(frozen=True)
class Secret:
    """Where a secret-shaped string lies in a text, and what it looks like."""
    start: int
    end: int
    type: str


@dataclass(frozen=True)
class _Detector:
    type: str
    patterns: tuple
    hints: tuple | None
    valid: object = None  # a shape check on the match (JWT), or None


@functools.lru_cache(maxsize=1)
def detectors() -> tuple[_Detector, ...]:
    """The detectors, built once per process (importing detect-secrets takes ~0.25 s)."""
    import importlib
    out = []
    for module, cls, hints in PLUGINS:
        plugin = getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), cls)
        patterns = tuple(p for p in plugin.denylist if not p.pattern.startswith(_ASSIGNMENT))
        if plugin.secret_type == PRIVATE_KEY:
            # The plugin finds the header; a redactor must mask the whole block.
            header = "|".join(p.pattern for p in patterns)
            patterns = (re.compile(rf"(?:{header})[\s\S]*?{_KEY_END}"),)
        valid = getattr(plugin, "is_formally_valid", None)
        out.append(_Detector(plugin.secret_type, patterns, hints, valid))
    for type_, pattern, hints in EXTRA_FORMATS:
        out.append(_Detector(type_, (pattern,), hints))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _all_hints() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(hints to find exactly, hints to find in the lowercased text)."""
    hints = {h for d in detectors() for h in (d.hints or ())}
    return tuple(h for h in hints if h != h.lower()), tuple(h for h in hints if h == h.lower())


def find_secrets(text: str, merge: bool = True) -> list[Secret]:
    """Every secret-shaped span in `text` by format, in order. With merge, overlapping
    spans become one (the first detector's type is kept), which is what masking needs;
    without, each match stands alone, which is what a report needs (a key block without
    an END line reaches the end of the text and would swallow later findings)."""
    found = []
    low = text.lower()
    exact, folded = _all_hints()
    present = {h for h in exact if h in text} | {h for h in folded if h in low}
    for d in detectors():
        if d.hints is not None and present.isdisjoint(d.hints):
            continue
        for pattern in d.patterns:
            for m in pattern.finditer(text):
                if d.valid is not None and not d.valid(m.group(0)):
                    continue
                spans = []
                if d.type in GROUP_IS_SECRET:
                    spans = [m.span(g) for g in range(1, pattern.groups + 1) if m.group(g)]
                for start, end in spans or [m.span()]:
                    if d.type == PRIVATE_KEY:
                        while start > 0 and text[start - 1] == "-":  # the header's dashes
                            start -= 1
                    while start < end and text[start] in _EDGE:
                        start += 1
                    while end > start and text[end - 1] in _EDGE:
                        end -= 1
                    if end > start:
                        found.append(Secret(start, end, d.type))
    found.sort(key=lambda s: (s.start, -s.end))
    if not merge:
        return found
    merged: list[Secret] = []
    for s in found:
        if merged and s.start < merged[-1].end:
            last = merged[-1]
            if s.end > last.end:
                merged[-1] = Secret(last.start, s.end, last.type)
            continue
        merged.append(s)
    return merged


def _escaped_forms(value: str) -> set[str]:
    """The value as it appears once or twice JSON-encoded (inside a JSON string inside a
    JSON string), so an escaped quote or backslash does not let it through."""
    once = json.dumps(value, ensure_ascii=False)[1:-1]
    once_ascii = json.dumps(value)[1:-1]
    return {value, once, once_ascii, json.dumps(once)[1:-1], json.dumps(once_ascii)[1:-1]}


class Redactor:
    def __init__(self, extra_secrets: list[str] | None = None, environ: dict | None = None):
        env = os.environ if environ is None else environ
        values = {v for k, v in env.items() if SECRET_NAME.search(k) and v and len(v) >= MIN_SECRET_LEN}
        values |= {s for s in (extra_secrets or []) if s and len(s) >= MIN_SECRET_LEN}
        forms = set().union(*(_escaped_forms(v) for v in values)) if values else set()
        # longest first, so a secret containing another is masked whole
        self.values = sorted(forms, key=len, reverse=True)
        self._cache: dict[str, str] = {}

    def find(self, s: str) -> list[Secret]:
        """Every secret in `s`, by value (type ENV_SECRET) and by format, unmerged."""
        found = []
        for v in self.values:
            start = s.find(v)
            while start != -1:
                found.append(Secret(start, start + len(v), ENV_SECRET))
                start = s.find(v, start + len(v))
        found += find_secrets(s, merge=False)
        return sorted(found, key=lambda x: (x.start, -x.end))

    def text(self, s: str) -> str:
        if len(s) < MIN_SCAN_LEN:
            return s
        if len(s) <= CACHE_MAX_LEN:
            hit = self._cache.get(s)
            if hit is None:
                if len(self._cache) >= CACHE_ENTRIES:
                    self._cache.clear()
                hit = self._cache[s] = self._text(s)
            return hit
        return self._text(s)

    def _text(self, s: str) -> str:
        for v in self.values:
            if v in s:
                s = s.replace(v, MASK)
        secrets = find_secrets(s)
        if not secrets:
            return s
        out, pos = [], 0
        for sec in secrets:
            out += [s[pos:sec.start], MASK]
            pos = sec.end
        out.append(s[pos:])
        return "".join(out)

    def clean(self, value):
        """A copy of a JSON-like value with every string masked: values, dict keys, and
        strings in lists and tuples at any depth. Keys that mask alike stay distinct."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (list, tuple)):
            return [self.clean(v) for v in value]
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                key = self.text(k) if isinstance(k, str) else k
                if key in out:
                    # Two secrets as keys would otherwise collapse into one entry.
                    n = 2
                    while f"{key}#{n}" in out:
                        n += 1
                    key = f"{key}#{n}"
                out[key] = self.clean(v)
            return out
        return value
