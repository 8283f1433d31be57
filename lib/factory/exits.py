"""The exit codes of the tools along the chain, in one place, so that a caller decides by
name and never by a bare number.

    factory-issue next --claim | factory-slot KIND -- factory-spawn      (factory start)

A wrapper's own refusals must never be mistaken for the codes of what it wraps: an exit
status carries no sender. factory-slot execs its command, so its own refusals use codes
its command never returns in practice: sysexits.h's (64-78), which factory-spawn (0-7,
78, 130) and a shell (126, 127, 128+N) leave alone, as nq keeps to 111 and 222. Where
factory-spawn shares one (78), both mean the same thing: factory.yaml is invalid and
nothing was done, so it does not matter which of the two said it.

factory-spawn's code is only a summary: a spawn that printed a run JSON is judged by that
JSON (status, infra, landed); its code matters only when it printed none.
"""

from __future__ import annotations

# -- every tool (see cli.py) ------------------------------------------------------------
OK = 0
NO = 1              # failed, or the answer is "no" (factory-issue next: nothing ready)
USAGE = 2           # usage or bad input; nothing was written

# -- sysexits.h ---------------------------------------------------------------------------
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78

# -- a shell's, for a command that cannot be run ----------------------------------------
CANNOT_RUN = 126
NOT_FOUND = 127
INTERRUPTED = 130   # SIGINT before anything began (128 + 2)

# -- factory-slot: any other code is its command's own ----------------------------------
SLOT_USAGE = EX_USAGE            # no command, not a kind, not in a repository
SLOT_CANNOT_FIT = EX_UNAVAILABLE  # the kind's request can never fit this machine, or its quota is 0
SLOT_BUSY = EX_TEMPFAIL          # --no-wait and no slot is free now
SLOT_CONFIG = EX_CONFIG          # factory.yaml (or FACTORY_CPUS / FACTORY_MEMORY) is invalid
SLOT_OWN = (SLOT_USAGE, SLOT_CANNOT_FIT, SLOT_BUSY, SLOT_CONFIG)

# -- factory-spawn ------------------------------------------------------------------------
# With a run JSON on stdout: the run's status.
SPAWN_STATUS = {"ok": 0, "failed": 1, "timeout": 3, "budget": 4, "error": 5, "stuck": 6}
# With none: nothing was run.
SPAWN_BAD_TASK = USAGE           # the task itself was refused: running it again cannot help
SPAWN_NOT_RUN = 7                # someone else holds the issue
SPAWN_CONFIG = EX_CONFIG         # factory.yaml is invalid, or ANTHROPIC_API_KEY is unset

# -- factory-gate -------------------------------------------------------------------------
GATE_REFUSED = NO                # at least one issue was refused, or waits for approval
GATE_ERROR = 5                   # no verdict could be reached: the factory's trouble (as spawn's error)

# -- factory-postmortem -------------------------------------------------------------------
POSTMORTEM_FAILED = NO           # some failure got no postmortem (git or the store failed); the others did
POSTMORTEM_CONFIG = EX_CONFIG    # factory.yaml is invalid; nothing was written

# -- factory start ------------------------------------------------------------------------
START_ALREADY_RUNNING = 3
START_CANNOT_FIT = EX_UNAVAILABLE  # --until-idle: ready work can never run on this machine

# -- factory-sense ------------------------------------------------------------------------
SENSE_ERROR = 5                  # a source could not look (no engine, no image, the model refused the key)
SENSE_CONFIG = EX_CONFIG         # factory.yaml is invalid; nothing ran
