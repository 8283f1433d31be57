#!/usr/bin/env python3
"""Benchmark runc against runsc (gVisor) on one engine; prints figures, asserts nothing.

Both runtimes run on the same engine, interleaved, so the machine's load falls on both
alike: an engine of the benchmark's own (tests/privateengine.py) with runsc registered
in its no-network mode, holding the default agent image copied from the default engine.
Medians of --runs:
  - start: Sandbox.start of a hardened agent container (as factory-spawn makes it) until
    it runs, and its removal; and a bare `docker run --rm --network none IMAGE true`
  - exec: one tool call's round trip through Sandbox.exec, for `true`, `python3 -c pass`
    and `git status` in a repository of 300 files (the agent's everyday calls)

Needs root, dockerd and runsc (apt-get install -y runsc); never touches the default
engine's configuration.

    python3 bench/runtime_bench.py [--runs 7] [--execs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from privateengine import PrivateEngine  # noqa: E402

from factory import config, images, sandbox  # noqa: E402

RUNTIMES = ("runc", "runsc")
CALLS = {"true": "true", "python3 -c pass": "python3 -c pass", "git status": "git -C repo status --short"}
# A repository of 300 small files in 30 directories in the workspace, for git status.
SAMPLE_REPO = ("git init -q repo && cd repo && for d in $(seq 30); do mkdir d$d; "
               "for f in $(seq 10); do echo $d $f > d$d/f$f; done; done && git add -A && git commit -qm sample")


def median_ms(xs):
    return statistics.median(xs) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="containers per runtime")
    ap.add_argument("--execs", type=int, default=15, help="tool calls of each kind per container")
    args = ap.parse_args()
    runsc = shutil.which("runsc") or "/usr/bin/runsc"
    if not os.access(runsc, os.X_OK):
        sys.exit("runtime_bench: runsc is not installed (apt-get install -y runsc)")
    image = images.ensure_image(images.recipe_from_config(config.DEFAULTS), log=lambda m: None)
    engine = PrivateEngine({"runtimes": {"runsc": dict(sandbox.RUNSC_ENTRY["runsc"], path=runsc)}},
                           prefix="factory-bench").start()
    try:
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        engine.docker("load", stdin=save.stdout, timeout=600)
        save.wait()
        os.environ["DOCKER_HOST"] = engine.host
        hardened = ["--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
                    "--user", "1000:1000", "--init", "--pids-limit", "512", "--memory", "2g", "--memory-swap", "2g"]
        fig = {rt: {"start": [], "remove": [], "bare": [], **{c: [] for c in CALLS}} for rt in RUNTIMES}
        for n in range(args.runs):
            for rt in RUNTIMES:
                t = time.monotonic()
                engine.docker("run", "--rm", "--runtime", rt, *hardened, image, "true")
                fig[rt]["bare"].append(time.monotonic() - t)
                t = time.monotonic()
                sb = sandbox.Sandbox.start(image, labels={"factory.bench": "1"}, cpus=1.0, memory="2g", pids=512,
                                           tmp_size="512m", disk="1g", deadline_s=600, runtime=rt)
                fig[rt]["start"].append(time.monotonic() - t)
                try:
                    made = sb.exec(SAMPLE_REPO, timeout=120)
                    if made.exit_code != 0:
                        sys.exit(f"runtime_bench: cannot make the sample repository under {rt}: {made.output[-300:]}")
                    for name, cmd in CALLS.items():
                        for _ in range(args.execs):
                            r = sb.exec(cmd, timeout=30)
                            if r.exit_code != 0:
                                sys.exit(f"runtime_bench: {name!r} under {rt} exited {r.exit_code}: {r.output[-300:]}")
                            fig[rt][name].append(r.duration)
                finally:
                    t = time.monotonic()
                    sb.remove()
                    fig[rt]["remove"].append(time.monotonic() - t)
        print(f"medians of {args.runs} containers (tool calls: {args.runs * args.execs} each), one engine, "
              f"runc and runsc interleaved")
        print(f"{'figure':42} {'runc':>9} {'runsc':>9} {'ratio':>7}")
        rows = [("hardened container start (Sandbox.start)", "start"), ("its removal", "remove"),
                ("docker run --rm ... true", "bare")] + [(f"tool call: {c}", c) for c in CALLS]
        for label, key in rows:
            a, b = median_ms(fig["runc"][key]), median_ms(fig["runsc"][key])
            print(f"{label:42} {a:7.0f}ms {b:7.0f}ms {b / a:6.1f}x")
    finally:
        os.environ.pop("DOCKER_HOST", None)
        for c in engine.containers():
            engine.docker("rm", "-f", c, check=False)
        engine.stop()


if __name__ == "__main__":
    main()
