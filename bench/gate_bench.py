#!/usr/bin/env python3
"""Benchmark the gate and the merge queue; prints figures, asserts nothing. Needs the
Docker engine.

  - the gate's overhead: wall time of `factory-gate --no-settle ID` (merge result, a fresh
    hardened container, checkout, the checks, the record) as a ratio to running the same
    checks in a bare `docker run --rm --network none` of the same image on a checkout of
    the same tree (target: at most 2x), for checks that take next to nothing and for
    checks that take about --work seconds
  - the merge queue's throughput: 10 passing branches, all made from the same main, merged
    one after the other with `factory merge` (each after the first is judged again as a
    merge commit on the main the previous one left), in branches per minute, and as a
    ratio to 10 bare runs of the same checks

    python3 bench/gate_bench.py              # --repeat 5 --work 2
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import ENV, WORK_COMMAND, WORK_TEST, bare_run, sh, timed  # noqa: E402

from factory import config, images  # noqa: E402


def make_repo(root: str, work: float) -> str:
    repo = os.path.join(root, "repo")
    sh("git", "init", "-q", "-b", "main", repo)
    with open(os.path.join(repo, "test_work.py"), "w") as f:
        f.write(WORK_TEST.format(work=work))
    with open(os.path.join(repo, "factory.yaml"), "w") as f:
        f.write(f"gate:\n  checks: [{json.dumps(WORK_COMMAND)}]\n")
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "init", cwd=repo)
    return repo


def branch_in_review(repo: str, n: int) -> str:
    issue = json.loads(sh("factory-issue", "file", cwd=repo, input=json.dumps({"title": f"work {n}"}) + "\n"))
    branch = f"factory/{issue['id']}"
    base = sh("git", "rev-parse", "main", cwd=repo).strip()
    # the branch made with plumbing from the same main, without touching the work tree
    blob = sh("git", "hash-object", "-w", "--stdin", cwd=repo, input=f"change {n}\n").strip()
    tree = sh("git", "mktree", cwd=repo, input=sh("git", "ls-tree", base, cwd=repo)
              + f"100644 blob {blob}\tchange-{n}.txt\n").strip()
    commit = sh("git", "commit-tree", tree, "-p", base, "-m", f"change {n}", cwd=repo).strip()
    sh("git", "update-ref", f"refs/heads/{branch}", commit, cwd=repo)
    sh("factory-issue", "update", issue["id"], "--state", "review", "--branch", branch, cwd=repo)
    return issue["id"]




def gate_overhead(image: str, work: float, repeat: int) -> tuple[float, float]:
    root = tempfile.mkdtemp(prefix="factory-gate-bench-")
    try:
        repo = make_repo(root, work)
        issue_id = branch_in_review(repo, 0)
        checkout = os.path.join(root, "checkout")
        sh("git", "clone", "-q", "-b", f"factory/{issue_id}", repo, checkout)
        gate, bare = [], []
        for _ in range(repeat):  # interleaved, so that drift on a noisy machine hits both
            bare.append(timed(lambda: bare_run(image, checkout)))
            gate.append(timed(lambda: subprocess.run(["factory-gate", "-q", "--no-settle", issue_id], cwd=repo,
                                                     env=ENV, check=True, capture_output=True)))
        return statistics.median(gate), statistics.median(bare)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def queue_throughput(image: str, work: float, n: int) -> tuple[float, float]:
    root = tempfile.mkdtemp(prefix="factory-queue-bench-")
    try:
        repo = make_repo(root, work)
        ids = [branch_in_review(repo, k) for k in range(n)]
        checkout = os.path.join(root, "checkout")
        sh("git", "clone", "-q", repo, checkout)
        bare = timed(lambda: [bare_run(image, checkout) for _ in range(n)])

        def merge_all():
            for issue_id in ids:
                subprocess.run(["factory", "merge", issue_id], cwd=repo, env=ENV, check=True, capture_output=True)
        queue = timed(merge_all)
        merged = sh("git", "rev-list", "--count", "--merges", "main", cwd=repo).strip()
        print(f"  (main has {merged} merge commits; work tree clean: "
              f"{sh('git', 'status', '--porcelain', cwd=repo) == ''})")
        return queue, bare
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", type=float, default=2.0, help="seconds of CPU the realistic checks take")
    ap.add_argument("--branches", type=int, default=10)
    args = ap.parse_args()
    image = images.ensure_image(images.recipe_from_config(config.DEFAULTS), log=lambda m: None)
    print("gate overhead (median wall time of one verdict vs the same checks in a bare docker run):")
    for work in (0.0, args.work):
        gate, bare = gate_overhead(image, work, args.repeat)
        print(f"  checks of ~{work:g} s CPU: gate {gate:.2f} s, bare docker run {bare:.2f} s, "
              f"ratio {gate / bare:.2f}x (target <= 2x)")
    print(f"merge queue ({args.branches} passing branches from the same main, merged one at a time):")
    queue, bare = queue_throughput(image, args.work, args.branches)
    print(f"  {queue:.1f} s in all, {queue / args.branches:.2f} s per branch, "
          f"{60 * args.branches / queue:.1f} branches/minute; {args.branches} bare runs of the checks "
          f"{bare:.1f} s; ratio {queue / bare:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
