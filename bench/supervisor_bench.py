#!/usr/bin/env python3
"""Benchmark the kernel (factory-slot, factory start) against the scripted model; prints
figures, asserts nothing. Needs the Docker engine; runs as root.

  - share of slot-held time inside agent turns: one worker whose model answers each of
    5 turns after 2 s; slot-held = the wall time of `factory-slot worker -- factory-spawn`,
    agent turns = first model request to last model answer (target >= 85%)
  - kernel CPU per agent run: CPU of the tools' processes plus the Docker engine's
    (dockerd, containerd) for `factory start --until-idle` over N issues, per run, as a
    ratio to the same measure for a bare `docker run --rm IMAGE true`
  - agents at once against the quota (6 issues, 3 worker slots)
  - the supervisor's CPU while idle for --idle seconds (target: near zero)

    python3 bench/supervisor_bench.py            # --idle 60
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from modelserver import ScriptedModel, delay, text, tool_use  # noqa: E402

from factory import config, images  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def engine_cpu() -> float:
    total = 0.0
    for name in ("dockerd", "containerd"):
        for pid in subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split():
            total += proc_cpu(int(pid))
    return total


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(fn):
    """(result, CPU seconds of fn's child processes + the engine's)"""
    c0, e0 = children_cpu(), engine_cpu()
    out = fn()
    return out, (children_cpu() - c0) + (engine_cpu() - e0)


def make_repo(tmp, workers):
    repo = os.path.join(tmp, "repo")
    subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
    with open(os.path.join(repo, "factory.yaml"), "w") as f:
        f.write(f"slots:\n  worker: {workers}\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    subprocess.run(["git", "-C", repo, "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", repo, "commit", "-qm", "init"], check=True, env=env)
    return repo


def file_issues(repo, env, n):
    lines = "".join(json.dumps({"title": f"bench {k}"}) + "\n" for k in range(n))
    out = subprocess.run(["factory-issue", "file", "-q"], cwd=repo, env=env, input=lines, capture_output=True,
                         text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def agent(turns: int, answer_s: float):
    """A scripted agent: turns-1 bash calls, then a file, each answer after answer_s."""
    def respond(body):
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        issue_id = re.search(r'"id": "([0-9a-f]{12})"', body["messages"][0]["content"][0]["text"]).group(1)
        if n < turns - 2:
            step = tool_use("bash", {"command": f"echo turn {n}"})
        elif n == turns - 2:
            step = tool_use("str_replace_based_edit_tool", {"command": "create", "file_text": "x",
                                                            "path": f"/workspace/repo/{issue_id}.txt"})
        else:
            step = text("done")
        return delay(answer_s, step)
    return respond


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="factory-kernel-bench-")
    try:
        repo = make_repo(tmp, workers=3)
        image = images.ensure_image(images.recipe_from_config(config.DEFAULTS, repo), log=lambda m: None)
        with ScriptedModel([agent(5, 2.0)] * 500) as api:
            env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], ANTHROPIC_API_KEY="sk-ant-bench-x",
                       ANTHROPIC_BASE_URL=api.base_url, FACTORY_RUNS_DIR=os.path.join(tmp, "runs"),
                       FACTORY_ACTOR="human:bench",
                       # let the quota decide how many run, not this 2-core machine's CPUs
                       FACTORY_CPUS="16", FACTORY_MEMORY="64g")

            # 1. slot-held time inside agent turns
            (issue,) = file_issues(repo, env, 1)
            t0 = time.monotonic()
            p = subprocess.run(["factory-slot", "-q", "worker", "--", "factory-spawn", "-q"], cwd=repo, env=env,
                               input=json.dumps(issue), capture_output=True, text=True)
            held = time.monotonic() - t0
            run = json.loads(p.stdout)
            turns_s = run["timings"]["last_answer_s"] - run["timings"]["first_request_s"]

            # 2 + 3. kernel CPU per run, agents at once
            file_issues(repo, env, args.runs)
            peak = [0]
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    out = subprocess.run(["docker", "ps", "-q", "--filter", "label=factory.kind=worker"],
                                         capture_output=True, text=True).stdout
                    peak[0] = max(peak[0], len(out.split()))
                    time.sleep(0.2)
            w = threading.Thread(target=watch, daemon=True)
            w.start()
            _, kernel_cpu = measured(lambda: subprocess.run(["factory", "start", "--until-idle"], cwd=repo, env=env,
                                                            capture_output=True, check=True))
            stop.set()
            w.join()
            bare = [measured(lambda: subprocess.run(["docker", "run", "--rm", image, "true"], capture_output=True))[1]
                    for _ in range(5)]
            bare_cpu = sorted(bare)[2]

            # 4. idle supervisor
            sup = subprocess.Popen(["factory", "start"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(3)  # past start-up and reconciliation
            c0 = proc_cpu(sup.pid)
            time.sleep(args.idle)
            idle_cpu = proc_cpu(sup.pid) - c0
            sup.terminate()
            sup.wait()

        print(f"slot-held time inside agent turns: {turns_s:.2f} s of {held:.2f} s = {turns_s / held * 100:.1f}%"
              "   (target >= 85%)")
        per_run = kernel_cpu / args.runs
        print(f"kernel CPU per agent run: {per_run:.2f} s; bare docker run --rm: {bare_cpu:.2f} s; "
              f"ratio {per_run / bare_cpu:.1f}x   (tools' processes + dockerd + containerd, both sides)")
        print(f"agents at once: peak {peak[0]} against a worker quota of 3 ({args.runs} issues)")
        print(f"supervisor CPU while idle: {idle_cpu:.2f} s over {args.idle:.0f} s = "
              f"{idle_cpu / args.idle * 100:.2f}% of a core   (target: near zero)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
