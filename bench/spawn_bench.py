#!/usr/bin/env python3
"""Benchmark factory-spawn against the scripted model; prints figures, asserts nothing.

For a one-tool-call worker task, as ratios to a bare `docker run --rm IMAGE true` of the
same image measured in the same run (medians of --runs):
  - start of factory-spawn -> its first model request   (target <= 4x)
  - last model answer      -> factory-spawn's exit      (target <= 2x)
Over a 20-turn scripted run: the share of input tokens read from the prompt cache from
turn 2 on (target >= 80%). And how fast --help and refused input answer.

Needs a Docker engine (scripts/ensure-docker) and runs as root, like factory-spawn.

    python3 bench/spawn_bench.py
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
sys.path.insert(0, os.path.join(ROOT, "tests"))

from modelserver import ScriptedModel, text, tool_use  # noqa: E402

from factory import config, images  # noqa: E402

KEY = "sk-ant-bench-not-a-real-key-000000000000"


def sample_repo(path):
    subprocess.run(["git", "init", "-q", "-b", "main", path], check=True)
    with open(os.path.join(path, "README"), "w") as f:
        f.write("bench\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    subprocess.run(["git", "-C", path, "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", path, "commit", "-qm", "init"], check=True, env=env)


def file_issue(repo, env, title):
    p = subprocess.run(["factory-issue", "file", "-q"], cwd=repo, env=env, input=json.dumps({"title": title}) + "\n",
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def one_run(repo, env, tmp, n):
    """(start->first request, last answer->exit) in seconds, for a one-tool-call task."""
    marks = {}

    def first(body):
        marks["first"] = time.monotonic()
        return tool_use("str_replace_based_edit_tool", {"command": "create", "path": "/workspace/repo/f.txt",
                                                        "file_text": "x"})

    def last(body):
        marks["last"] = time.monotonic()
        return text("done")

    issue = file_issue(repo, env, f"bench {n}")
    with ScriptedModel([first, last]) as api:
        e = dict(env, ANTHROPIC_BASE_URL=api.base_url)
        t0 = time.monotonic()
        p = subprocess.run([os.path.join(BIN, "factory-spawn"), "-q"], cwd=repo, env=e, input=json.dumps(issue),
                           capture_output=True, text=True)
        t_exit = time.monotonic()
    if p.returncode != 0:
        raise SystemExit(f"spawn failed ({p.returncode}): {p.stderr}")
    return marks["first"] - t0, t_exit - marks["last"]


def cache_share(repo, env, turns=20):
    issue = file_issue(repo, env, "cache bench")
    script = [tool_use("bash", {"command": f"echo turn {n}"}) for n in range(turns - 2)]
    script += [tool_use("str_replace_based_edit_tool", {"command": "create", "path": "/workspace/repo/c.txt",
                                                        "file_text": "c"}), text("done")]
    with ScriptedModel(script) as api:
        e = dict(env, ANTHROPIC_BASE_URL=api.base_url)
        subprocess.run([os.path.join(BIN, "factory-spawn"), "-q"], cwd=repo, env=e, input=json.dumps(issue),
                       capture_output=True, text=True, check=True)
    later = api.usages[1:]
    read = sum(u["cache_read_input_tokens"] for u in later)
    total = sum(u["cache_read_input_tokens"] + u["cache_creation_input_tokens"] + u["input_tokens"] for u in later)
    return read / total, len(api.usages)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="factory-spawn-bench-")
    try:
        repo = os.path.join(tmp, "repo")
        sample_repo(repo)
        env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], ANTHROPIC_API_KEY=KEY,
                   FACTORY_RUNS_DIR=os.path.join(tmp, "runs"), FACTORY_ACTOR="human:bench")
        image = images.ensure_image(images.recipe_from_config(config.DEFAULTS, repo), log=lambda m: None)

        bare = []
        for _ in range(args.runs + 1):
            t = time.monotonic()
            subprocess.run(["docker", "run", "--rm", image, "true"], check=True, capture_output=True)
            bare.append(time.monotonic() - t)
        bare = statistics.median(bare[1:])  # the first run warms the engine's caches

        one_run(repo, env, tmp, "warm-up")
        firsts, lasts = zip(*(one_run(repo, env, tmp, n) for n in range(args.runs)))
        share, turns = cache_share(repo, env)

        def timed(args_, input_=None):
            t = time.monotonic()
            subprocess.run(args_, env=env, cwd=repo, input=input_, capture_output=True, text=True)
            return time.monotonic() - t
        help_s = statistics.median(timed([os.path.join(BIN, "factory-spawn"), "--help"]) for _ in range(5))
        bad_s = statistics.median(timed([os.path.join(BIN, "factory-spawn")], "not json") for _ in range(5))

        f, la = statistics.median(firsts), statistics.median(lasts)
        print(f"baseline: docker run --rm {image} true   {bare:6.3f} s (median of {args.runs})")
        print(f"spawn start -> first model request        {f:6.3f} s = {f / bare:4.1f}x   (target <= 4x)")
        print(f"last model answer -> spawn exit            {la:6.3f} s = {la / bare:4.1f}x   (target <= 2x)")
        print(f"prompt cache: share of input read from cache, turns 2..{turns}: {share * 100:5.1f}%   (target >= 80%)")
        print(f"factory-spawn --help                       {help_s:6.3f} s")
        print(f"factory-spawn with refused input           {bad_s:6.3f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
