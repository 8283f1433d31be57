#!/usr/bin/env python3
"""Benchmark factory-sense's overhead on a command sensor; prints figures, asserts
nothing. Needs the Docker engine.

Wall time of `factory-sense work` (config, the slot, a fresh hardened container with no
network, the checkout of main's tip inside it, the command, its findings, the run's
record in git) as a ratio to running the same command in a bare
`docker run --rm --network none -v CHECKOUT:/w:ro -w /w IMAGE bash -c CMD` of the same
image on a checkout of the same tree (target: at most 2x), for a command that takes
next to nothing and for one that takes about --work seconds of CPU. Runs are
interleaved, so that drift on a noisy machine hits both; medians are printed.

The sensor's container gets --cpus CPUs (resources.sensor.cpus; default here 1, as much
as the single-threaded command can use in the bare run; factory's default for sensors is
0.5, under which CPU-bound work takes twice as long by design, not by overhead).

    python3 bench/sense_bench.py              # --repeat 5 --work 2 --cpus 1
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


def make_repo(root: str, work: float, cpus: float) -> str:
    repo = os.path.join(root, "repo")
    sh("git", "init", "-q", "-b", "main", repo)
    with open(os.path.join(repo, "test_work.py"), "w") as f:
        f.write(WORK_TEST.format(work=work))
    with open(os.path.join(repo, "factory.yaml"), "w") as f:
        f.write(f"sensors:\n  work:\n    command: {json.dumps(WORK_COMMAND)}\nresources:\n  sensor:\n    cpus: {cpus}\n")
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "init", cwd=repo)
    return repo




def sense_run(repo: str) -> None:
    p = subprocess.run(["factory-sense", "-q", "work"], cwd=repo, env=ENV, capture_output=True, text=True)
    if p.returncode != 0 or p.stdout.strip():  # the command passes: no finding, exit 0
        raise SystemExit(f"factory-sense work: exit {p.returncode}, findings {p.stdout!r}, {p.stderr}")


def overhead(image: str, work: float, repeat: int, cpus: float) -> tuple[float, float, int]:
    root = tempfile.mkdtemp(prefix="factory-sense-bench-")
    try:
        repo = make_repo(root, work, cpus)
        checkout = os.path.join(root, "checkout")
        sh("git", "clone", "-q", repo, checkout)
        sense, bare = [], []
        for _ in range(repeat):
            bare.append(timed(lambda: bare_run(image, checkout)))
            sense.append(timed(lambda: sense_run(repo)))
        recorded = len(sh("git", "for-each-ref", "refs/factory/runs/", cwd=repo).splitlines())
        return statistics.median(sense), statistics.median(bare), recorded
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", type=float, default=2.0, help="seconds of CPU the realistic command takes")
    ap.add_argument("--cpus", type=float, default=1.0, help="resources.sensor.cpus of the sensor's container")
    args = ap.parse_args()
    image = images.ensure_image(images.recipe_from_config(config.DEFAULTS), log=lambda m: None)
    print("factory-sense overhead (median wall time of one command sensor run vs the same command "
          f"in a bare docker run; the sensor's container has {args.cpus:g} CPUs):")
    for work in (0.0, args.work):
        sense, bare, recorded = overhead(image, work, args.repeat, args.cpus)
        print(f"  command of ~{work:g} s CPU: factory-sense {sense:.2f} s, bare docker run {bare:.2f} s, "
              f"ratio {sense / bare:.2f}x (target <= 2x); {recorded} runs recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
