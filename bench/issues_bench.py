#!/usr/bin/env python3
"""Benchmark the issue store: file N issues in one call, list them, change state, and count
git processes per operation at two store sizes. Prints figures; asserts nothing.

Targets (README): filing 10,000 in one `file` call <= 10 s, listing them <= 1 s, one state
change <= 50 ms p95, git processes per operation independent of the number of issues.
Baselines measured in the same run: one bare `git update-ref` and `python3 -c pass`.

    python3 bench/issues_bench.py            # N = 10000
    python3 bench/issues_bench.py --n 2000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")
sys.path.insert(0, os.path.join(ROOT, "lib"))

from factory.gitstore import Repo  # noqa: E402
from factory.issues import IssueStore  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def p95(xs):
    return sorted(xs)[max(0, int(len(xs) * 0.95) - 1)]


def counting_git(tmp):
    """A `git` first on PATH that logs each call, so operations can be counted."""
    real = shutil.which("git")
    d = os.path.join(tmp, "gitcount")
    os.makedirs(d)
    log = os.path.join(tmp, "git.log")
    with open(os.path.join(d, "git"), "w") as f:
        f.write(f"#!/bin/sh\necho \"$1\" >> {log}\nexec {real} \"$@\"\n")
    os.chmod(os.path.join(d, "git"), 0o755)
    return d, log


def make_repo(tmp, name):
    path = os.path.join(tmp, name)
    subprocess.run(["git", "init", "-q", path], check=True)
    return path


def run(args, repo, env, input=None):
    p = subprocess.run(args, cwd=repo, env=env, input=input, capture_output=True)
    if p.returncode not in (0, 1):
        raise SystemExit(f"{args} failed: {p.stderr.decode()}")
    return p


def count_git_calls(repo, env, log, n_issues):
    """git processes for each CLI operation, on a store of n_issues."""
    store = IssueStore(Repo(repo))
    some = store.all()[0]["id"]
    ops = {
        "list": ["factory-issue", "list"],
        "next": ["factory-issue", "next"],
        "show": ["factory-issue", "show", some],
        "update": ["factory-issue", "update", some, "--priority", "1"],
        "comment": ["factory-issue", "comment", some, "-m", "hi"],
        "claim": ["factory-issue", "claim", some],
        "file one": ["factory-issue", "file", "-q"],
    }
    counts = {}
    for name, args in ops.items():
        open(log, "w").close()
        run(args, repo, env, input=b'{"title": "one more"}\n' if name == "file one" else None)
        counts[name] = sum(1 for _ in open(log))
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="factory-bench-")
    try:
        env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], FACTORY_ACTOR="human:bench")
        repo = make_repo(tmp, "big")
        lines = "".join(json.dumps({"title": f"issue {k}", "body": "x" * 200, "labels": ["bench"]}) + "\n"
                        for k in range(args.n)).encode()

        t_file = timed(lambda: run(["factory-issue", "file", "-q"], repo, env, input=lines))
        t_list = min(timed(lambda: run(["factory-issue", "list"], repo, env)) for _ in range(3))
        t_lib_list = min(timed(lambda: IssueStore(Repo(repo)).all()) for _ in range(3))

        store = IssueStore(Repo(repo))
        ids = [i["id"] for i in store.all()[: args.changes]]
        lib_changes = [timed(lambda i=i: store.update(i, {"state": "review"}, "human:bench")) for i in ids]
        cli_changes = [timed(lambda i=i: run(["factory-issue", "update", i, "--state", "open"], repo, env))
                       for i in ids[: max(10, args.changes // 4)]]

        base_ref = [timed(lambda: subprocess.run(["git", "-C", repo, "update-ref", "refs/bench/x", "HEAD"],
                                                 capture_output=True)) for _ in range(20)]
        base_py = [timed(lambda: subprocess.run([sys.executable, "-c", "pass"])) for _ in range(10)]

        gitdir, log = counting_git(tmp)
        cenv = dict(env, PATH=gitdir + os.pathsep + env["PATH"])
        small = make_repo(tmp, "small")
        run(["factory-issue", "file", "-q"], small, env,
            input="".join(json.dumps({"title": f"s{k}"}) + "\n" for k in range(100)).encode())
        calls_small = count_git_calls(small, cenv, log, 100)
        calls_big = count_git_calls(repo, cenv, log, args.n)

        print(f"issues: {args.n}")
        print(f"file {args.n} in one call:    {t_file:7.2f} s   (target <= 10 s)")
        print(f"list {args.n} (CLI):          {t_list:7.3f} s   (target <= 1 s)")
        print(f"list {args.n} (library):      {t_lib_list:7.3f} s")
        print(f"state change, library:   p50 {statistics.median(lib_changes) * 1000:6.1f} ms  "
              f"p95 {p95(lib_changes) * 1000:6.1f} ms   (target p95 <= 50 ms)")
        print(f"state change, CLI:       p50 {statistics.median(cli_changes) * 1000:6.1f} ms  "
              f"p95 {p95(cli_changes) * 1000:6.1f} ms   (includes starting Python)")
        print(f"baseline: one git update-ref  p50 {statistics.median(base_ref) * 1000:6.1f} ms; "
              f"python3 -c pass p50 {statistics.median(base_py) * 1000:6.1f} ms")
        print(f"ratio: library state change p50 / one git update-ref = "
              f"{statistics.median(lib_changes) / statistics.median(base_ref):.1f}x")
        print("git processes per operation (100 issues -> %d issues):" % args.n)
        for op in calls_small:
            flag = "" if calls_small[op] == calls_big[op] else "   <-- grows"
            print(f"  {op:10s} {calls_small[op]:3d} -> {calls_big[op]:3d}{flag}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
