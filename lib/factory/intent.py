"""The intent layer: intent/{principles,prohibitions,postmortems,specs}/*.md on the main branch.

This module owns its layout. `factory init` lays out the skeleton; later, agents' system
prompts are built from it.
"""

from __future__ import annotations

import os

INTENT_DIR = "intent"

SECTIONS = {
    "principles": "The constitution: what every agent strives toward. One principle per file,\n"
                  "a short title line (`# ...`), then why it matters and what it asks of an agent.\n",
    "prohibitions": "The guardrails: what no agent may do. One per file. A prohibition may carry a\n"
                    "line `check: COMMAND`; the gate runs COMMAND on every branch and refuses the\n"
                    "branch when it exits non-zero.\n",
    "postmortems": "Case law: one file per failure, written by factory-postmortem: the root cause,\n"
                   "the contributing factors, what should have happened, and the principle or\n"
                   "prohibition it gave rise to.\n",
    "specs": "What this repository is meant to do: PRDs and specs. Sensors compare them with\n"
             "what the repository does, and file the differences as issues.\n",
}


def skeleton_files() -> dict[str, str]:
    """Relative path -> content of every file `factory init` creates under intent/."""
    files = {}
    for section, text in SECTIONS.items():
        files[os.path.join(INTENT_DIR, section, "README.md")] = f"# intent/{section}\n\n{text}"
    return files
