"""The one list of factory's executables and of its kinds of agent.

Like git's command-list.txt: adding a tool is one line here (plus its cmd_<tool>.py, its
bin/ shim and its pyproject entry, which a test checks against this list), and every
place that enumerates tools or kinds (the umbrella's help, the docs generator, the
config's per-kind sections, the slots, the contracts) reads it from here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Tool:
    name: str       # the executable, factory-VERB (or factory itself)
    module: str     # lib/factory/<module>.py holds its click command `cli` and `main`
    summary: str    # one line for `factory --help`

    @property
    def verb(self) -> str | None:
        return self.name.split("-", 1)[1] if "-" in self.name else None

    def cli(self):
        return importlib.import_module(f"factory.{self.module}").cli


TOOLS = (
    Tool("factory", "cmd_factory", "the front end: init, status, start, stop, logs, image, review, approve, cron; factory VERB"),
    Tool("factory-issue", "cmd_issue", "the git-native issue store"),
    Tool("factory-slot", "cmd_slot", "hold a slot of a kind while a command runs"),
    Tool("factory-spawn", "cmd_spawn", "one agent in one hardened container"),
    Tool("factory-gate", "cmd_gate", "may this branch merge? a verdict on the merge result"),
    Tool("factory-sense", "cmd_sense", "run sensors and adversaries; print their findings"),
    Tool("factory-postmortem", "cmd_postmortem", "failures become postmortems and lessons"),
)

# The kinds of agent, in the order they are shown: workers take issues and leave
# branches, sensors compare intent with reality, adversaries attack what workers built.
KINDS = ("worker", "sensor", "adversary")

# What holds a slot: the kinds of agent, plus the gate (a branch's checks in a container
# of their own) and the postmortem (an agent that turns a failure into a lesson). Issues
# are only ever of the agent KINDS.
SLOT_KINDS = KINDS + ("gate", "postmortem")


def tool(name: str) -> Tool:
    for t in TOOLS:
        if t.name == name:
            return t
    raise KeyError(name)
