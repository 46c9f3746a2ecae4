"""Wall-clock marks of this ClientApp process, for the time line of a deployment round.

In Flower's Deployment Engine every message starts a fresh ClientApp process, so a round's cost
per node includes waiting for the SuperNode to pick the message up, starting Python, importing
torch/transformers and loading the model, before any compute. The marks are epoch seconds (the
server's clock on loopback), sent back as ``at-*`` reply metrics; bench.deploy_overhead turns
them into the time line in docs/performance.md.
"""

from __future__ import annotations

import os
import time

IMPORT_STARTED = time.time()  # this module is the ClientApp's first import
imports_done: float | None = None  # set by client_app.app once its imports are done
# A message run by the warm worker (client_app.worker) reports the marks of the per-message
# process that forwarded it: the process Flower started is the one whose cost the round paid.
adopted: dict[str, float] | None = None


def own_marks() -> dict[str, float]:
    """This process's start and import marks (what a forwarded message carries along)."""
    return {
        "at-process-start": process_started(),
        "at-imports-start": IMPORT_STARTED,
        "at-imports-done": imports_done if imports_done is not None else IMPORT_STARTED,
    }


def adopt(marks: dict[str, float]) -> None:
    """Report ``marks`` (another process's ``own_marks``) instead of this process's own."""
    global adopted
    adopted = {
        k: float(marks[k]) for k in ("at-process-start", "at-imports-start", "at-imports-done")
    }


def process_started() -> float:
    """When this process started (epoch seconds; Linux /proc, else the first import)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat: start time after boot, in ticks
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return IMPORT_STARTED


def marks(handler_started: float) -> dict[str, float]:
    """The ``at-*`` metrics of one reply (the reply itself is stamped when they are made)."""
    return {
        **(adopted if adopted is not None else own_marks()),
        "at-handler-start": handler_started,
        "at-reply": time.time(),
    }
