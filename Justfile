# factory's command runner: each recipe calls the tools; logic lives in the tools.
# `./setup` first (it installs `just` into .venv), then `. .venv/bin/activate`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list

# the main job: set up a demo repository, file issues, show the factory's status
demo dir="/tmp/factory-demo":
    scripts/demo "{{dir}}"

# run the whole test suite (bats black-box pipes, then pytest; Docker tests included)
test *args:
    scripts/ensure-test-user
    bats tests/
    pytest {{args}}

# run the benchmarks and print their figures (spawn and supervisor need the Docker engine)
bench:
    python3 bench/issues_bench.py
    python3 bench/spawn_bench.py
    python3 bench/supervisor_bench.py
    python3 bench/gate_bench.py
    python3 bench/sense_bench.py

# compare runc with runsc (gVisor) on an engine of its own (root; runsc installed: ./setup --runsc)
bench-runtime:
    python3 bench/runtime_bench.py

# renew constraints.txt, the pinned versions ./setup installs: upgrade, then test, then commit
lock:
    .venv/bin/pip install -q --upgrade -e '.[test]'
    .venv/bin/pip freeze --exclude-editable > constraints.txt

# regenerate docs/commands/*.md from the tools' --help
docs:
    python3 -m factory.docs .

# make sure a Docker engine answers (starts dockerd as root when none does)
engine:
    scripts/ensure-docker
