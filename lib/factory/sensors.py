"""What a sensor's output means: the sources factory.yaml enables (with the shipped
definitions filled in), and the parsers that turn a command's output into findings
(the test runners' failure lines, or a user's jq `map:`).

A finding made here is a draft: factory-sense adds source, target, commit and run, then
validates it (contracts.validate_finding) before anything prints or files it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass

from . import catalog

DEFAULT_SEVERITY = "medium"
MAX_FINDINGS_PER_RUN = 200   # a suite that fails everywhere files one screenful, not thousands


class SensorError(Exception):
    """A source cannot run as defined (an unknown name, a jq map that is not jq)."""


@dataclass(frozen=True)
class Source:
    name: str
    kind: str              # sensor | adversary
    command: str | None    # a command sensor: the shell command (None with parser tests: detected)
    prompt: str | None     # a model sensor or an adversary: its brief
    map: str | None        # a jq expression from the command's output to findings
    parser: str | None     # "tests": one finding per failing test
    target: str            # main | review
    schedule: str
    quotes: tuple = ()     # a finding must quote a line of a file under one of these folders (drift)

    @property
    def source(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def is_model(self) -> bool:
        return self.prompt is not None


def enabled(cfg: dict) -> list[Source]:
    """Every source factory.yaml enables, sensors first, in the order written."""
    return [_source("sensor", n, e) for n, e in cfg["sensors"].items()] + \
           [_source("adversary", n, e) for n, e in cfg["adversaries"].items()]


def named(cfg: dict, names) -> list[Source]:
    """The sources with these names: enabled in factory.yaml, or shipped (catalog.py)."""
    out = []
    for name in names:
        if name in cfg["sensors"]:
            out.append(_source("sensor", name, cfg["sensors"][name]))
        elif name in cfg["adversaries"]:
            out.append(_source("adversary", name, cfg["adversaries"][name]))
        elif name in catalog.SENSORS:
            out.append(_source("sensor", name, {}))
        elif name in catalog.ADVERSARIES:
            out.append(_source("adversary", name, {}))
        else:
            known = sorted(set(cfg["sensors"]) | set(cfg["adversaries"]) | set(catalog.SENSORS)
                           | set(catalog.ADVERSARIES))
            raise SensorError(f"no sensor or adversary named {name!r} (known: {', '.join(known)}; "
                              "define one under sensors: or adversaries: in factory.yaml)")
    return out


def _source(kind: str, name: str, entry: dict) -> Source:
    shipped = (catalog.SENSORS if kind == "sensor" else catalog.ADVERSARIES).get(name, {})
    mine = {k: v for k, v in entry.items() if v is not None}
    if kind == "sensor" and ("command" in mine or "prompt" in mine):
        shipped = {}  # a definition of one's own replaces the shipped one whole
    merged = {**shipped, **mine}
    return Source(name=name, kind=kind, command=merged.get("command"), prompt=merged.get("prompt"),
                  map=merged.get("map"), parser=merged.get("parser"), target=merged.get("target", "main"),
                  schedule=merged.get("schedule", "@hourly"), quotes=tuple(merged.get("quotes") or ()))


# -- the quote rule -------------------------------------------------------------------

MIN_QUOTE_CHARS = 12   # shorter lines ("- yes", "Exit codes") say too little to count as a quote
_MARKUP = re.compile(r"^(?:[-*+>]\s+|\d+[.)]\s+|>\s*)+")


def quotable_lines(files: dict[str, bytes]) -> list[str]:
    """The lines of these markdown files a finding may quote: normalised (list markers
    and quote marks dropped, spaces collapsed), headings and short lines left out."""
    out = []
    for content in files.values():
        for line in content.decode("utf-8", errors="replace").splitlines():
            line = _normal(line)
            if len(line) >= MIN_QUOTE_CHARS and not line.startswith("#"):
                out.append(line)
    return out


def quoted_line(text: str, lines: list[str]) -> str | None:
    """The first of `lines` that `text` quotes (each of its lines normalised alike), or None."""
    said = "\n".join(_normal(t) for t in text.splitlines())
    return next((line for line in lines if line in said), None)


def _normal(line: str) -> str:
    return " ".join(_MARKUP.sub("", line.strip()).split())


# -- test runners' output --------------------------------------------------------------

# pytest's short summary (-rf, -rA, the default -rfE): "FAILED tests/t.py::T::test_x - msg"
# (not unittest's closing "FAILED (failures=1)": a test id never starts with "(")
PYTEST_LINE = re.compile(r"^(FAILED|ERROR) ([^\s(]\S*)(?: - (.*))?$")
# unittest: "FAIL: test_x (mod.Class.test_x)" (3.11+) or "ERROR: test_x (mod.Class)"
UNITTEST_LINE = re.compile(r"^(FAIL|ERROR): (\S+) \(([^)\s]+)\)")
UNITTEST_END = re.compile(r"^(={20,}|-{20,})$")


def failing_tests(output: str) -> list[dict]:
    """[{id, outcome, message, evidence}] for each failing test the output names, in
    order, once each."""
    lines = output.splitlines()
    found: dict[str, dict] = {}
    for n, line in enumerate(lines):
        m = PYTEST_LINE.match(line)
        if m:
            test_id, msg = m.group(2), (m.group(3) or "").strip()
            found.setdefault(test_id, {"id": test_id, "outcome": m.group(1).lower(), "message": msg,
                                       "evidence": line})
            continue
        m = UNITTEST_LINE.match(line)
        if m:
            name, where = m.group(2), m.group(3)
            test_id = where if where.endswith("." + name) else f"{where}.{name}"
            block = [line]
            for follow in lines[n + 1:]:
                if UNITTEST_END.match(follow) and len(block) > 2:
                    break
                block.append(follow)
            errors = [b.strip() for b in block if re.match(r"^\w*(Error|Exception|Failure)\b", b.strip())]
            found.setdefault(test_id, {"id": test_id, "outcome": m.group(1).lower(),
                                       "message": errors[-1] if errors else "",
                                       "evidence": "\n".join(block).strip()})
    return list(found.values())


def findings_from_tests(output: str, exit_code: int | None) -> tuple[list[dict], bool]:
    """(findings, covered) from a test run. covered: the run says, of every test it
    knows, whether it fails (it ran to the end and its failures could be read), so a
    test it no longer names is known to pass."""
    tests = failing_tests(output)
    findings = [{"title": f"test fails: {t['id']}"[:256] + (f": {t['message']}" if t["message"] else ""),
                 "body": f"The test `{t['id']}` {'fails' if t['outcome'].startswith('fail') else 'errors'}"
                         + (f": {t['message']}" if t["message"] else "") + ".",
                 "severity": "high", "fingerprint": f"test:{t['id']}", "evidence": t["evidence"]}
                for t in tests]
    for f in findings:
        f["title"] = " ".join(f["title"].split())[:256]
    if exit_code == 0:
        return findings, True
    if exit_code is None:
        return findings, False
    if not findings:  # it failed, and says nothing a parser can read: one finding for the suite
        findings = [{"title": "the test suite fails", "severity": "high", "fingerprint": "test:suite",
                     "body": f"The test command exits {exit_code}, naming no failing test that could be read.",
                     "evidence": output[-8000:]}]
        return findings, False
    return findings, True


# -- a user's jq map --------------------------------------------------------------------

def findings_from_map(name: str, expression: str, output: str) -> list[dict]:
    """Run `jq -c EXPRESSION` on the command's output: read as JSON values when it is
    JSON, else as one string per line (jq -R). Each value jq prints must be an object; a
    missing severity is medium, a missing fingerprint is NAME: and a hash of the title."""
    raw = False
    try:
        for _ in _json_values(output):
            pass
    except ValueError:
        raw = True
    try:
        p = subprocess.run(["jq", "-c", *(["-R"] if raw else []), expression], input=output, capture_output=True,
                           text=True, timeout=60)
    except FileNotFoundError:
        raise SensorError("jq is not installed on this machine; install it (apt-get install jq) to use map:")
    except subprocess.TimeoutExpired:
        raise SensorError(f"sensors.{name}.map: jq ran for more than 60 s; simplify the expression")
    if p.returncode != 0:
        raise SensorError(f"sensors.{name}.map: jq failed: {p.stderr.strip()[:500]}")
    out = []
    for line in p.stdout.splitlines():
        value = json.loads(line)
        if not isinstance(value, dict):
            raise SensorError(f"sensors.{name}.map: gave {line[:80]!r}, not an object such as "
                              "{\"title\": ..., \"fingerprint\": ...}")
        value.setdefault("severity", DEFAULT_SEVERITY)
        if value.get("title") and not value.get("fingerprint"):
            value["fingerprint"] = f"{name}:" + hashlib.sha256(str(value["title"]).encode()).hexdigest()[:16]
        out.append(value)
    return out


def _json_values(text: str):
    decoder, i = json.JSONDecoder(), 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return
        value, i = decoder.raw_decode(text, i)
        yield value


def findings_from_exit(name: str, output: str, exit_code: int | None) -> list[dict]:
    """A command sensor without map: a non-zero exit is its one finding."""
    if exit_code in (0, None):
        return []
    return [{"title": f"sensor {name} fails (exit {exit_code})", "severity": DEFAULT_SEVERITY,
             "fingerprint": f"{name}:exit", "body": f"The command of sensor {name} exits {exit_code}.",
             "evidence": output[-8000:]}]
