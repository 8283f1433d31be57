"""factory-sense: run sensors and adversaries; print what they saw as findings."""

from __future__ import annotations

import os
import sys

import click

from . import exits
from .cli import CONTEXT_SETTINGS, BadInput, Failed, emit, open_repo, repo_option, run_main

TOOL = "factory-sense"


@click.command(context_settings=CONTEXT_SETTINGS, epilog=f"""
\b
Input: the names of sensors and adversaries: defined under sensors: and adversaries:
in factory.yaml, or shipped (sensors tests and drift, adversaries redteam and newcomer;
enabled in factory.yaml by name alone: `sensors: {{tests: {{}}}}`). No name: every one
factory.yaml enables, except those muted for their precision (named, they run anyway).

\b
What each does, in a slot of its kind (sensor or adversary) held while it runs, on its
target (main's tip; target: review, each branch in review):
  command  runs in a fresh hardened container with no network; its output becomes
           findings: tests reads the failing tests pytest and unittest name (one
           finding each, fingerprint test:<test id>); map: is a jq expression from the
           output to finding objects; without map a non-zero exit is one finding
  prompt   a model agent in its own container reports findings (report_finding)
A finding with a reproduction is believed only if the reproduction exits non-zero on
the target in a fresh container (on a review branch it must also pass on the branch's
base, else the finding is main's). An adversary's finding that does not reproduce is
dropped and counted, never printed or filed. Every run is recorded under
refs/factory/runs/<run> with its counts. See docs/sense.md.

\b
--file files the findings through the issue store, once per signature (a finding whose
issue is still open, in review, or done but not verified files nothing; one back after
its issue was verified fixed files a regression linked to it), and closes as verified
fixed the done issues of the source that the run no longer sees.

\b
Output: one finding JSON per line (docs/contracts.md): v, title, body, severity,
fingerprint, source (sensor:NAME or adversary:NAME), evidence, reproduction, target,
commit, run, confirmed. A summary per source on stderr.

\b
Exit codes:
  0    every source looked (whatever it found)
  2    usage: an unknown name, not in a git repository; nothing ran
  {exits.SENSE_ERROR}    a source could not look (no Docker engine, no image, the model API
       refused), or its agent ended in error (what it reported before is still
       handled): the others still ran
  {exits.SENSE_CONFIG}   factory.yaml is invalid; nothing ran

\b
Examples:
  factory-sense tests
  factory-sense tests --file
  factory-sense tests | factory-issue file --dedupe | jq -r .id
  factory-slot sensor -- factory-sense drift --file
""")
@click.argument("names", nargs=-1)
@click.option("--file", "file_", is_flag=True, help="File the findings as issues (deduplicated by signature) "
                                                     "and close verified fixes.")
@repo_option
@click.option("-p", "--pretty", is_flag=True, help="Indent the finding JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def cli(names, file_, pretty, quiet):
    """Run sensors and adversaries; print their findings as JSON lines."""
    from . import config, sense, sensors
    from .issues import IssueStore, default_actor
    repo = open_repo(TOOL)
    try:
        cfg = config.load(repo.work_tree() or repo.git_dir)
    except config.ConfigError as e:
        raise Failed(TOOL, f"{e}\n(fix factory.yaml; nothing ran)", code=exits.SENSE_CONFIG)
    try:
        sources = sensors.named(cfg, names) if names else sensors.enabled(cfg)
    except sensors.SensorError as e:
        raise BadInput(TOOL, f"{e}; nothing ran")
    log = (lambda msg: None) if quiet else (lambda msg: print(f"{TOOL}: {msg}", file=sys.stderr, flush=True))
    if not sources:
        log("no sensor or adversary is enabled (enable one in factory.yaml, e.g. sensors: {tests: {}}; "
            "or name one: factory-sense tests)")
        return exits.OK
    store = IssueStore(repo, warn=log)
    if not names:
        stats = sense.precision(repo, store)
        keep = []
        for s in sources:
            why = sense.muted(stats.get(s.source, {"filed": 0, "dropped": 0, "not_useful": 0, "precision": None}),
                              cfg["sense"]["min_precision"])
            if why:
                log(f"{s.source}: {why}")
            else:
                keep.append(s)
        sources = keep
    code = exits.OK
    for source in sources:
        try:
            with _slot(repo, cfg, source):
                run = sense.run_source(repo, cfg, store, source, file=file_, actor=source.source, log=log)
        except (sense.SenseError, sensors.SensorError) as e:
            print(f"{TOOL}: {source.source}: could not look: {e}", file=sys.stderr)
            code = exits.SENSE_ERROR
            continue
        for f in run["findings"]:
            emit(f, pretty=pretty)
        sys.stdout.flush()
        log(f"{run['reason']} (run {run['run']})")
        if run["status"] == "error":
            code = exits.SENSE_ERROR
    return code


class _slot:
    """Hold a slot of the source's kind while it runs (factory-slot's library, so
    `factory-slot status` and `factory status` show it), unless factory-slot already
    gave this process one of that kind."""

    def __init__(self, repo, cfg, source):
        self.repo, self.cfg, self.source, self.fds = repo, cfg, source, []

    def __enter__(self):
        from .env import slots_dir
        from .slots import NoFit, SlotError, Slots
        if os.environ.get("FACTORY_SLOT_KIND") == self.source.kind:
            return self
        try:
            got = Slots(slots_dir(self.repo), self.cfg).acquire(self.source.kind,
                                                                command=f"factory-sense {self.source.name}")
        except NoFit as e:
            raise Failed(TOOL, f"{self.source.source}: {e}", code=exits.SENSE_CONFIG)
        except SlotError as e:
            raise BadInput(TOOL, str(e))
        self.fds = got[1]
        return self

    def __exit__(self, *exc):
        for fd in self.fds:
            os.close(fd)
        return False


def main() -> int:
    return run_main(cli, TOOL)


if __name__ == "__main__":
    sys.exit(main())
