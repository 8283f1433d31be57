"""What the benchmarks of checks in containers share: the environment the tools run in, a
test that works for a given number of CPU seconds, and the bare `docker run` of the same
command that each figure is a ratio to."""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")
sys.path.insert(0, os.path.join(ROOT, "lib"))

ENV = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), FACTORY_ACTOR="human:bench",
           GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
ENV.pop("FACTORY_REPO", None)
# A test that works for about {work} seconds of CPU, and passes.
WORK_TEST = """import time, unittest
class T(unittest.TestCase):
    def test_work(self):
        end = time.process_time() + {work}
        n = 0
        while time.process_time() < end:
            n += 1
        self.assertGreaterEqual(n, 0)
"""
WORK_COMMAND = "PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q test_work"


def sh(*args, cwd=None, input=None) -> str:
    return subprocess.run(args, cwd=cwd, env=ENV, input=input, capture_output=True, text=True, check=True).stdout


def timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def bare_run(image: str, checkout: str, command: str = WORK_COMMAND) -> None:
    """The baseline: the same command in a bare `docker run` of the same image, no network."""
    subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{checkout}:/w:ro", "-w", "/w",
                    image, "bash", "-c", command], check=True, capture_output=True)
