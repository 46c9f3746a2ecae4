"""The end of a sweep: what became of each job, and one summary line per job."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

STATUSES = ("complete", "resumed", "skipped", "failed", "not run", "dry-run", "submitted")


@dataclass
class JobOutcome:
    """What became of one job: the line it gets in the sweep summary, and its exit code."""

    index: int
    run: str
    run_dir: str
    method: str
    status: str  # complete | resumed | skipped | failed | not run | dry-run | submitted
    returncode: int = 0
    error: str = ""  # first line of the error (failed jobs)
    overrides: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _swept(outcomes: list[JobOutcome]) -> list[str]:
    """Override keys whose values differ between jobs (what the sweep varies)."""
    values: dict[str, set[str]] = {}
    for o in outcomes:
        for item in o.overrides:
            key, _, value = item.lstrip("+~").partition("=")
            values.setdefault(key, set()).add(value)
    keys = [k for k, v in values.items() if len(v) > 1]
    return [k for k in keys if k not in ("method", "run_config.method.name")]


def summary_lines(outcomes: list[JobOutcome], cwd: Path | None = None) -> list[str]:
    """One line per job: number, method and swept values, status, run directory, error (its
    first sentence before "Fix:"; the whole message is in the job's log and launch.json)."""
    cwd = cwd or Path.cwd()
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in STATUSES[:4])
    keys = _swept(outcomes)
    rows = []
    for o in outcomes:
        given = dict(item.lstrip("+~").partition("=")[::2] for item in o.overrides)
        what = " ".join([f"method={o.method}", *(f"{k}={given[k]}" for k in keys if k in given)])
        where = o.run_dir or "-"
        with contextlib.suppress(ValueError):
            where = str(Path(where).relative_to(cwd))
        error = o.error.split(" Fix:")[0].rstrip(".")
        rows.append((f"#{o.index}", what, o.status, where, error[:240]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"[launch] summary of {len(outcomes)} job(s): {tally}"]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:4], widths, strict=True)]
        lines.append("  " + "  ".join([*cells, row[4]]).rstrip())
    return lines
