"""factory.yaml: its keys, their defaults, and validation whose errors name the key and line.

The schema below is the single source of truth: `factory init` writes TEMPLATE, a test
checks that TEMPLATE documents every key and parses to DEFAULTS, and `load` refuses any
unknown key, wrong type or bad value, naming `factory.yaml line N: a.b.c`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

CONFIG_NAME = "factory.yaml"
from .registry import SLOT_KINDS
from .catalog import SHIPPED_ADVERSARIES, SHIPPED_SENSORS


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# -- value types ---------------------------------------------------------------------

@dataclass
class Int:
    default: int
    min: int | None = None
    max: int | None = None

    def check(self, v):
        if isinstance(v, bool) or not isinstance(v, int):
            return None, f"must be a whole number, not {v!r}"
        if self.min is not None and v < self.min:
            return None, f"is {v}; it must be at least {self.min}"
        if self.max is not None and v > self.max:
            return None, f"is {v}; it must be at most {self.max}"
        return v, None


@dataclass
class Float:
    default: float
    min_exclusive: float = 0.0
    max: float | None = None

    def check(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"must be a number, not {v!r}"
        if v <= self.min_exclusive:
            return None, f"is {v}; it must be more than {self.min_exclusive}"
        if self.max is not None and v > self.max:
            return None, f"is {v}; it must be at most {self.max}"
        return float(v), None


SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(v) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    m = SIZE_RE.match(str(v).strip()) if isinstance(v, str) else None
    if not m:
        return None
    n = int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])
    return n if n > 0 else None


@dataclass
class Size:
    """A byte size such as 512m or 2g; kept as written, checked to parse and to be at least
    `min` (a bare number is bytes: `memory: 1` would be one byte, which no agent runs in)."""
    default: str
    min: str = "1m"

    def check(self, v):
        n = parse_size(v)
        if n is None:
            return None, f"{v!r} is not a size such as 512m or 2g"
        if n < parse_size(self.min):
            return None, f"is {v!r} ({n} bytes); it must be at least {self.min} (a bare number is bytes)"
        return v, None


@dataclass
class RepoPath:
    """A file's path relative to the repository's top: not absolute, no '..' out of it."""
    default: str | None = None

    def check(self, v):
        if v is None:
            return None, None
        if not isinstance(v, str) or not v.strip():
            return None, f"must be a path relative to the repository, or null, not {v!r}"
        if re.search(r"[\x00-\x1f\x7f]", v):
            return None, "holds a control character (newline, NUL, ...); remove it"
        if os.path.isabs(v) or v.startswith("~"):
            return None, f"{v!r} is absolute; give a path relative to the repository's top"
        if ".." in os.path.normpath(v).split(os.sep):
            return None, f"{v!r} reaches outside the repository ('..'); give a path inside it"
        return v, None


@dataclass
class Str:
    default: str | None
    nullable: bool = False
    pattern: str | None = None
    hint: str = ""

    def check(self, v):
        if v is None and self.nullable:
            return None, None
        if not isinstance(v, str) or not v.strip():
            return None, f"must be a non-empty string{', or null' if self.nullable else ''}, not {v!r}"
        if self.pattern and not re.fullmatch(self.pattern, v):  # `$` would let a newline through
            return None, f"{v!r} {self.hint or 'is not valid'}"
        return v, None


@dataclass
class Choice:
    default: str
    choices: tuple

    def check(self, v):
        if v not in self.choices:
            return None, f"is {v!r}; it must be one of: {', '.join(self.choices)}"
        return v, None


@dataclass
class Schedule:
    """A cron schedule, checked by schedules.py (croniter) so that cron and the supervisor
    read it alike; null: run only by hand."""
    default: str | None

    def check(self, v):
        if v is None:
            return None, None
        from . import schedules
        err = schedules.check(v)
        return (None, err) if err else (v.strip(), None)


@dataclass
class StrList:
    default: list

    def check(self, v):
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            return None, f"must be a list of strings, not {v!r}"
        return v, None


PEER_GITHUB_RE = re.compile(r"^github:[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
PEER_SCHEMES = ("file", "ssh", "https")
PEER_URL_HINT = "give a path, file://, ssh://, https://, git@host:path or github:OWNER/REPO"


def check_peer_url(v) -> str | None:
    """Why `v` cannot be a peer's URL, or None. A peer URL reaches `git fetch`: a value
    git would read as an option (`--upload-pack=CMD`) or as a transport that runs a
    program (`ext::CMD`, `X::` remote helpers) must never get that far."""
    if not isinstance(v, str) or not v.strip():
        return f"must be a non-empty string, not {v!r}"
    if re.search(r"[\x00-\x1f\x7f]", v):
        return f"{v!r} holds a control character (newline, NUL, ...); remove it"
    if v.startswith("-"):
        return f"{v!r} starts with '-', which git would take as an option; {PEER_URL_HINT}"
    if v.startswith("github:"):
        return None if PEER_GITHUB_RE.match(v) else f"{v!r} is not github:OWNER/REPO"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", v):
        return f"{v!r} names a git transport helper (X::...), which runs a program; {PEER_URL_HINT}"
    scheme, sep, rest = v.partition("://")
    if sep:
        if scheme not in PEER_SCHEMES:
            return f"{v!r}: the scheme {scheme}:// is not accepted; {PEER_URL_HINT}"
        host = rest.rpartition("@")[2] if "@" in rest.split("/", 1)[0] else rest
        if scheme != "file" and (not rest or host.startswith("-") or rest.startswith("-")):
            return f"{v!r} has no host, or one that starts with '-'; {PEER_URL_HINT}"
        return None
    head, colon, _ = v.partition(":")
    if colon and "/" not in head:  # git reads host:path as scp-like ssh
        if not re.match(r"^([A-Za-z0-9._-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*$", head):
            return f"{v!r} is not user@host:path; {PEER_URL_HINT}"
    return None


@dataclass
class PeerUrl:
    """Where a peer's issues are fetched from (see check_peer_url)."""
    default: str | None = None

    def check(self, v):
        err = check_peer_url(v)
        return (None, err) if err else (v, None)


@dataclass
class Named:
    """A mapping from names the user picks to entries of one shape."""
    entry: dict
    required: tuple = ()
    one_of: tuple = ()
    default: dict = field(default_factory=dict)
    # Names with a shipped definition (catalog.py): such an entry may give none of
    # `required` and `one_of`, and takes what it leaves out from the catalog.
    catalog: tuple = ()


# What a harvest leaves out of an agent's branch besides what the repository ignores:
# caches that tools write as a side effect of running, never work.
DEFAULT_HARVEST_EXCLUDE = ("__pycache__/", "*.py[cod]", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/",
                           ".hypothesis/", ".coverage", ".tox/", ".nox/", "node_modules/", ".DS_Store")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Any name an engine may have registered in its daemon.json (runc, runsc, crun, ...); only
# the engine knows which it has, so sandbox.py checks that when it creates a container.
RUNTIME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"  # contracts.MODEL_RE
MIN_MEMORY = "64m"   # below this an agent's container cannot start git, let alone work
MIN_SCRATCH = "1m"   # /tmp and /workspace
TARGETS = ("main", "review")   # what a sensor or adversary looks at: main, or branches in review

SCHEMA: dict[str, Any] = {
    "version": Int(1, min=1, max=1),
    "slots": {
        "total": Int(8, min=1),
        "worker": Int(3, min=0),
        "sensor": Int(2, min=0),
        "adversary": Int(1, min=0),
        "gate": Int(1, min=0),
        "postmortem": Int(1, min=0),
    },
    "resources": {
        kind: {"cpus": Float(cpus), "memory": Size(mem, min=MIN_MEMORY), "pids": Int(512, min=16),
               "tmp": Size(tmp, min=MIN_SCRATCH), "disk": Size(disk, min=MIN_SCRATCH)}
        for kind, cpus, mem, tmp, disk in (("worker", 1.0, "2g", "512m", "1g"), ("sensor", 0.5, "1g", "256m", "512m"),
                                           ("adversary", 1.0, "2g", "512m", "1g"),
                                           ("gate", 1.0, "2g", "512m", "1g"),
                                           ("postmortem", 0.5, "1g", "256m", "512m"))
    },
    "gate": {
        "checks": StrList([]),
        "timeout_seconds": Int(1800, min=1),
    },
    "postmortem": {
        "turns": Int(20, min=1),
        "tokens": Int(500_000, min=1),
        "cost_usd": Float(1.0),
        "wall_seconds": Int(900, min=1),
        "check_timeout_seconds": Int(600, min=1),
    },
    "harvest": {
        "max_bytes": Size("64m", min="1k"),
        "exclude": StrList(list(DEFAULT_HARVEST_EXCLUDE)),
    },
    "image": {
        "name": Str("factory-agent", pattern=r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$",
                    hint="is not a docker image name such as factory-agent"),
        "base": Str("debian:bookworm-slim"),
        "packages": StrList(["bash", "git", "ca-certificates", "python3"]),
        "dockerfile": RepoPath(None),
        "build": Choice("auto", ("auto", "registry", "offline")),
    },
    "sandbox": {
        "runtime": Str("runc", pattern=RUNTIME_PATTERN,
                       hint="is not a runtime name such as runc or runsc (lowercase letters, digits, . _ -)"),
    },
    "model": {
        "name": Str("claude-sonnet-4-5", pattern=MODEL_PATTERN,
                    hint="is not a model name such as claude-sonnet-4-5 (letters, digits, . _ : @ / -)"),
        "max_tokens": Int(8192, min=1),
    },
    "budgets": {
        "turns": Int(60, min=1),
        "tokens": Int(2_000_000, min=1),
        "cost_usd": Float(5.0),
        "wall_seconds": Int(1800, min=1),
        "attempts": Int(3, min=1),
        "retry_backoff_seconds": Int(60, min=0),
    },
    "sensors": Named({
        "command": Str(None, nullable=True),
        "prompt": Str(None, nullable=True),
        "schedule": Schedule("@hourly"),
        "map": Str(None, nullable=True),
        "target": Choice("main", TARGETS),
    }, one_of=("command", "prompt"), catalog=SHIPPED_SENSORS),
    "adversaries": Named({
        "prompt": Str(None, nullable=True),
        "schedule": Schedule("@daily"),
        "target": Choice("main", TARGETS),
    }, required=("prompt",), catalog=SHIPPED_ADVERSARIES),
    "sense": {
        "scheduler": Choice("cron", ("cron", "supervisor")),
        "min_precision": Float(0.5, max=1.0),
    },
    "peers": Named({
        "url": PeerUrl(),
        "trust": Choice("untrusted", ("trusted", "untrusted")),
        "type": Choice("git", ("git", "github")),
    }, required=("url",)),
    "merge": Choice("manual", ("manual", "auto")),
}


def _defaults(schema):
    if isinstance(schema, dict):
        return {k: _defaults(v) for k, v in schema.items()}
    if isinstance(schema, Named):
        return dict(schema.default)
    return schema.default


DEFAULTS = _defaults(SCHEMA)

TEMPLATE = """\
# factory.yaml: how factory runs on this repository. Every key is optional; the values
# below are the defaults. `factory init` wrote this file; edit it, then commit it.
version: 1

# Agents run in slots: at most `total` at once, and at most this many of each kind.
slots:
  total: 8
  worker: 3        # take an issue, leave a branch
  sensor: 2        # compare intent with reality, file findings
  adversary: 1     # attack what workers built, file failures with a reproduction
  gate: 1          # run a branch's checks on its merge result (factory-gate)
  postmortem: 1    # turn a failed run or a refused branch into a lesson

# Limits for each agent's container, per kind. An agent waits for a slot until its
# request fits the machine. Sizes: 512m, 2g, ... (a bare number is bytes); memory is at
# least 64m, tmp and disk at least 1m. /workspace (the agent's checkout) and /tmp live
# in memory: what an agent writes there counts against `memory`.
resources:
  worker:
    cpus: 1.0
    memory: 2g     # swap is capped to the same amount
    pids: 512      # processes and threads; a fork bomb stops here
    tmp: 512m      # the size of the container's writable /tmp
    disk: 1g       # the size of /workspace, the checkout and all the agent writes there
  sensor:
    cpus: 0.5
    memory: 1g
    pids: 512
    tmp: 256m
    disk: 512m
  adversary:
    cpus: 1.0
    memory: 2g
    pids: 512
    tmp: 512m
    disk: 1g
  gate:
    cpus: 1.0
    memory: 2g
    pids: 512
    tmp: 512m
    disk: 1g
  postmortem:
    cpus: 0.5
    memory: 1g
    pids: 512
    tmp: 256m
    disk: 512m

# May a branch merge? factory-gate runs these commands, in a fresh container with no
# network, at the top of the merge result (main plus the branch); each must exit 0.
# Empty: the repository's test command is detected (see docs/gate.md). Then every
# prohibition's `check:` runs, with FACTORY_BASE and FACTORY_HEAD set. The checks are
# read from main's committed factory.yaml: a branch cannot change what judges it.
gate:
  checks: []                    # e.g. ["python3 -m pytest -q", "ruff check ."]
  timeout_seconds: 1800         # for all checks of one verdict together

# factory-postmortem: a failed run or a refused branch becomes a postmortem and a lesson.
# The postmortem agent's budgets are small: it reads one failure and writes one page.
# A prohibition it proposes keeps its check only if the check fails on the refused
# head and passes on the base, each run in a fresh container within this time.
postmortem:
  turns: 20
  tokens: 500000
  cost_usd: 1.0
  wall_seconds: 900
  check_timeout_seconds: 600

# What leaves an agent's container: its branch, as a git bundle.
harvest:
  max_bytes: 64m   # a larger bundle is refused, and the run fails saying so (at least 1k)
  exclude: ["__pycache__/", "*.py[cod]", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/",
            ".hypothesis/", ".coverage", ".tox/", ".nox/", "node_modules/", ".DS_Store"]

# The image agents run in: bash, git and the repository's toolchain.
image:
  name: factory-agent
  base: debian:bookworm-slim    # used where a registry answers
  packages: [bash, git, ca-certificates, python3]   # Debian packages to add
  dockerfile: null              # a Dockerfile in this repository to use instead (a path
                                # relative to its top, no '..')
  build: auto                   # auto: registry, else offline (debootstrap); or registry, offline

# The OCI runtime agents' containers run under, as the Docker engine names it.
# runc: Docker's own. runsc: gVisor, a kernel in user space between the agent and the
# host's kernel (slower to start and to exec, and its own threads count against `pids`:
# keep 512 or more; see docs/runtime.md). The engine must know the name:
# `./setup --runsc` registers runsc with the default engine.
sandbox:
  runtime: runc

# The model behind every agent (env FACTORY_MODEL overrides name; letters, digits, . _ : @ / -).
model:
  name: claude-sonnet-4-5
  max_tokens: 8192              # per model answer

# Each agent run stops at the first budget it exhausts.
budgets:
  turns: 60
  tokens: 2000000               # input plus output, cache reads included
  cost_usd: 5.0
  wall_seconds: 1800
  attempts: 3                   # runs per issue before it is marked failed
  retry_backoff_seconds: 60     # a failed issue waits this long, doubled per attempt

# Sensors, by name (factory-sense; see docs/sense.md). Each gives exactly one of:
#   command:  a shell command run in an agent container; its output becomes findings
#   prompt:   instructions for a model agent that compares intent with the repository
# and may give:
#   schedule: a cron schedule (default @hourly; null: only by hand). Five fields or a
#             nickname (@hourly, @daily, @weekly, @monthly, @yearly); see sense.scheduler
#   map:      a jq expression turning the command's output into finding objects
#   target:   main (default) or review: each branch waiting in review
# Shipped ones are enabled by name alone: `tests: {}` (the test suite, one finding per
# failing test), `drift: {}` (a model compares intent/specs and principles with the code).
# Example:
#   lint:
#     command: ruff check --output-format json . 2>/dev/null
#     schedule: "0 * * * *"
#     map: '.[] | {title: (.code + " " + .message), fingerprint: ("ruff:" + .filename + ":" + .code)}'
#     target: main
sensors: {}

# Adversaries, by name: a model attacks main (or, target: review, each branch in review)
# and reports failures with a reproduction, re-run in a fresh container before anything
# is filed. Each gives:
#   prompt:   a red-team brief, or a synthetic user's persona and goal (required)
#   schedule: a cron schedule (default @daily; null: only by hand)
#   target:   main (default) or review: each branch waiting in review
# Shipped, enabled by name alone: `redteam: {}` (bad input, edge cases, concurrency),
# `newcomer: {}` (follows the README on a fresh clone). Example:
#   inputs:
#     prompt: Find an input that makes the parser crash or hang.
#     schedule: "30 2 * * *"
#     target: review
adversaries: {}

# Running sensors and adversaries on their schedules, and keeping them honest.
sense:
  scheduler: cron               # cron: `factory cron install` puts them in your crontab;
                                # supervisor: `factory start` fires them while it runs
                                # (for a machine without cron). Use one, not both.
  min_precision: 0.5            # a source whose share of useful findings falls below this
                                # (after 5 findings) is muted (more than 0, at most 1)

# Other factories this one files issues on, by name. Example:
#   libfoo:
#     url: https://github.com/example/libfoo.git   # or a path, file://, ssh://,
#                               # git@host:path, github:OWNER/REPO
#     trust: untrusted          # trusted: `factory-issue pull libfoo` takes their trust
#                               # and source changes; untrusted: their issues arrive untrusted
#     type: git                 # git or github
peers: {}

# What happens to a branch that passes the gate. manual: it waits in review until a
# person runs `factory merge ID`. auto: the merge queue lands it on main, one tested
# tree at a time (a checked-out main moves only with its clean work tree).
merge: manual
"""


# -- validation over YAML nodes, so every error can name its line ----------------------

def _scalar(node):
    import yaml
    return yaml.safe_load(yaml.serialize(node))


def _check(node, schema, path, problems, name):
    import yaml
    line = node.start_mark.line + 1
    where = f"{name} line {line}: {path}"
    if isinstance(schema, dict):
        if not isinstance(node, yaml.MappingNode):
            problems.append(f"{where}: must be a mapping of keys ({', '.join(schema)})")
            return {}
        out = {}
        for knode, vnode in node.value:
            key = knode.value
            kpath = f"{path}.{key}" if path else key
            if key not in schema:
                problems.append(f"{name} line {knode.start_mark.line + 1}: {kpath}: unknown key "
                                f"(known here: {', '.join(schema)})")
                continue
            out[key] = _check(vnode, schema[key], kpath, problems, name)
        return out
    if isinstance(schema, Named):
        if isinstance(node, yaml.ScalarNode) and _scalar(node) is None:
            return {}
        if not isinstance(node, yaml.MappingNode):
            problems.append(f"{where}: must be a mapping of names to entries")
            return {}
        out = {}
        for knode, vnode in node.value:
            entry_name = str(knode.value)
            epath = f"{path}.{entry_name}"
            if not re.fullmatch(NAME_PATTERN, entry_name):
                problems.append(f"{name} line {knode.start_mark.line + 1}: {epath}: names use letters, digits, . _ -")
                continue
            entry = _check(vnode, schema.entry, epath, problems, name)
            full = {k: entry.get(k, _defaults(s)) for k, s in schema.entry.items()}
            if entry_name in schema.catalog:
                if schema.one_of and sum(full.get(k) is not None for k in schema.one_of) > 1:
                    problems.append(f"{name} line {vnode.start_mark.line + 1}: {epath}: give at most one of "
                                    f"{' or '.join(schema.one_of)} (none: the shipped definition)")
                out[entry_name] = full
                continue
            for req in schema.required:
                if full.get(req) is None:
                    problems.append(f"{name} line {vnode.start_mark.line + 1}: {epath}.{req}: is required")
            if schema.one_of and sum(full.get(k) is not None for k in schema.one_of) != 1:
                problems.append(f"{name} line {vnode.start_mark.line + 1}: {epath}: give exactly one of "
                                f"{' or '.join(schema.one_of)}")
            out[entry_name] = full
        return out
    if not isinstance(node, yaml.ScalarNode) and not isinstance(schema, StrList):
        problems.append(f"{where}: must be a single value, not a {'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
        return None
    value, err = schema.check(_scalar(node))
    if err:
        problems.append(f"{where}: {err}")
    return value


def _key_line(root, *path) -> int:
    """The line of the key at `path` in a mapping node (its parent's, where it is not found)."""
    node, line = root, root.start_mark.line + 1
    for key in path:
        if not isinstance(node.value, list):
            break
        for knode, vnode in node.value:
            if knode.value == key:
                node, line = vnode, knode.start_mark.line + 1
                break
    return line


def _merge(defaults, given):
    if isinstance(defaults, dict) and isinstance(given, dict):
        out = dict(defaults)
        for k, v in given.items():
            out[k] = _merge(defaults.get(k), v) if k in defaults else v
        return out
    return given


def parse(text: str, name: str = CONFIG_NAME) -> dict:
    """The whole config (defaults filled in) from YAML text; raises ConfigError."""
    import yaml
    try:
        root = yaml.compose(text)
    except RecursionError:
        raise ConfigError([f"{name}: nested too deeply to be a config"])
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError([f"{name}{at}: not valid YAML: {getattr(e, 'problem', e)}"])
    if root is None:
        return _merge(DEFAULTS, {})
    problems: list[str] = []
    try:
        given = _check(root, SCHEMA, "", problems, name)
    except RecursionError:
        raise ConfigError([f"{name}: nested too deeply to be a config"])
    if not problems:
        for kind in SLOT_KINDS:
            if "slots" in given and given["slots"].get(kind, 0) > given["slots"].get("total", DEFAULTS["slots"]["total"]):
                problems.append(f"{name}: slots.{kind}: is more than slots.total")
        # `factory-sense NAME` runs a sensor or an adversary: a name must say which
        for both in sorted(set(given.get("sensors") or {}) & set(given.get("adversaries") or {})):
            problems.append(f"{name} line {_key_line(root, 'adversaries', both)}: adversaries.{both}: "
                            f"sensors.{both} has this name too; rename one (factory-sense NAME runs either)")
    if problems:
        raise ConfigError(problems)
    return _merge(DEFAULTS, given)


def path_for(work_tree: str) -> str:
    from .env import get
    return get("FACTORY_CONFIG") or os.path.join(work_tree, CONFIG_NAME)


def load(work_tree: str) -> dict:
    """The repository's config, or the defaults where it has no factory.yaml.

    The repository's own factory.yaml must be a file inside it: one that is a symlink to
    a file elsewhere is refused unread, so no error message can quote another file's
    lines. FACTORY_CONFIG is the operator's own choice and may point anywhere."""
    path = path_for(work_tree)
    if not os.environ.get("FACTORY_CONFIG") and os.path.islink(path):
        top = os.path.realpath(work_tree)
        real = os.path.realpath(path)
        if os.path.commonpath([top, real]) != top:
            raise ConfigError([f"{path}: is a symlink to a file outside the repository; refused unread "
                               "(make factory.yaml a file in the repository, or set FACTORY_CONFIG)"])
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return _merge(DEFAULTS, {})
    except OSError as e:
        raise ConfigError([f"{path}: cannot read it ({e.strerror})"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError([f"{path} line {line}: not UTF-8; fix the file"])
    return parse(text, name=path)
