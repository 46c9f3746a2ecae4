"""A grid's run records in one file the repository keeps: a run directory lives on the machine
that ran it, and a grid spread over machines (or sessions whose disks do not persist) would lose
its finished runs with each one. ``<archive>.jsonl`` holds, per complete run, exactly what the
report reads (config.json, metrics.jsonl, summary.json) and when it finished, one JSON line per
run sorted by name, so a new run is a one-line diff.

Merging never loses a run: a record is replaced only by a complete run of the same name that
finished later. The file is rewritten atomically under a lock (two reports at once wait for no
one: the second stops with the holder's name).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from task.durable import atomic_write_text
from task.locks import locked
from task.report.runs import Run, finished_at

FIELDS = ("name", "config", "metrics", "summary", "finished")


class ArchiveError(ValueError):
    """An archive line that is not a run record (named by file and line)."""


def _record(run: Run) -> dict[str, Any]:
    return {
        "name": run.name,
        "config": run.config,
        "metrics": run.metrics,
        "summary": run.summary,
        "finished": finished_at(run),
    }


def _run_of(record: Any, where: str) -> Run:
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        raise ArchiveError(f"{where}: not a run record (keys {', '.join(FIELDS)})")
    name, config, metrics, summary = (record[k] for k in FIELDS[:4])
    finished = record["finished"]
    if not (isinstance(name, str) and name and "/" not in name and not name.startswith(".")):
        raise ArchiveError(f"{where}: run name {name!r} is not a directory name")
    if not (isinstance(config, dict) and isinstance(metrics, list) and isinstance(summary, dict)):
        raise ArchiveError(f"{where}: config/summary must be objects and metrics a list")
    if not all(isinstance(m, dict) for m in metrics):
        raise ArchiveError(f"{where}: every metrics row must be an object")
    if isinstance(finished, bool) or not isinstance(finished, (int, float)):
        raise ArchiveError(f"{where}: finished must be a number (seconds since the epoch)")
    if not math.isfinite(finished):
        raise ArchiveError(f"{where}: finished must be finite")
    return Run(name, Path(where), config, metrics, summary, float(finished))


def read_archive(path: str | Path) -> list[Run]:
    """The runs an archive holds, sorted by name (none when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    runs = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ArchiveError(f"{where}: not JSON ({e.msg})") from None
        runs.append(_run_of(record, where))
    return sorted(runs, key=lambda r: r.name)


def merged(archived: Iterable[Run], live: Iterable[Run]) -> list[Run]:
    """One run per name: a complete live run replaces an archived one that finished no later;
    an incomplete live run never replaces anything (it is reported from its directory)."""
    by_name = {r.name: r for r in archived}
    for run in live:
        old = by_name.get(run.name)
        if old is None or (
            run.complete and (not old.complete or finished_at(run) > finished_at(old))
        ):
            by_name[run.name] = run
    return [by_name[name] for name in sorted(by_name)]


def update_archive(path: str | Path, live: Sequence[Run]) -> tuple[list[Run], int]:
    """Add the complete runs of ``live`` to the archive; returns (every archived run, how many
    records were added or replaced). Only complete runs are archived."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path, "run archive"):
        archived = read_archive(path)
        complete = [r for r in live if r.complete]
        runs = merged(archived, complete)
        before = {r.name: finished_at(r) for r in archived}
        changed = sum(before.get(r.name) != finished_at(r) for r in runs)
        if changed:
            text = "".join(json.dumps(_record(r), sort_keys=True) + "\n" for r in runs)
            atomic_write_text(path, text)
        return runs, changed


__all__ = ["ArchiveError", "merged", "read_archive", "update_archive"]
