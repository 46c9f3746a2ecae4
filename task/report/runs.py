"""Reading run directories: config.json, metrics.jsonl and summary.json of each run.

A run's config is kept as recorded (its keys define its setup). Settings the report needs are
looked up through :func:`with_defaults`, which fills keys an older run lacks with today's
defaults taken from the config dataclasses, so no default is typed here a second time and
configs written before a key existed (or holding keys since removed) still load.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from task.config import parse_app_config


@functools.cache
def _today_defaults() -> tuple[tuple[str, Any], ...]:
    return tuple(parse_app_config({}).to_flat().items())


def app_defaults() -> dict[str, Any]:
    """Today's flat run-config defaults (``section.key`` -> value), as pyproject.toml lists
    them: the dataclasses of task.config are the single source."""
    return dict(_today_defaults())


def with_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config with the keys it lacks at today's defaults (unknown keys kept)."""
    return {**app_defaults(), **cfg}


@dataclass
class Run:
    """One run directory as recorded (summary is None until the run finished)."""

    name: str
    root: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    finished: float | None = None  # when it finished, where no summary.json holds it (archives)

    @property
    def settings(self) -> dict[str, Any]:
        """The config with missing keys at today's defaults (see :func:`with_defaults`)."""
        return with_defaults(self.config)

    @property
    def method(self) -> str:
        return str(self.settings["method.name"])

    @property
    def seed(self) -> Any:
        return self.settings["train.seed"]

    @property
    def num_rounds(self) -> int:
        return int(self.settings["server.num-rounds"] or 0)

    @property
    def complete(self) -> bool:
        return (
            self.summary is not None
            and int(self.summary.get("final_round") or 0) >= self.num_rounds > 0
        )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of metrics.jsonl (a torn last line is ignored), as RunDir reads."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def load_runs(runs_dir: str | Path) -> list[Run]:
    """Every ``<runs_dir>/<name>/`` with a readable config.json, sorted by name."""
    out = []
    for root in sorted(Path(runs_dir).glob("*/config.json")):
        root = root.parent
        try:
            config = json.loads((root / "config.json").read_text())
        except json.JSONDecodeError:
            continue
        summary = None
        if (root / "summary.json").is_file():
            try:
                summary = json.loads((root / "summary.json").read_text())
            except json.JSONDecodeError:
                summary = None
        out.append(Run(root.name, root, config, read_metrics(root / "metrics.jsonl"), summary))
    return out


def missing_keys(run: Run, defaults: Mapping[str, Any]) -> list[str]:
    """Setup keys the app has now but this run's config.json lacks (added after it ran); keys
    that define no setup (where things live, how evaluation is scheduled) are not worth a note."""
    from task.config import NON_SETUP_KEYS

    return sorted(k for k in defaults if k not in run.config and k not in NON_SETUP_KEYS)


def finished_at(run: Run) -> float:
    """When the run finished: the archived time, else the mtime of summary.json (0 when
    absent); the newer of two reruns wins."""
    if run.finished is not None:
        return run.finished
    path = run.root / "summary.json"
    return path.stat().st_mtime if path.is_file() else 0.0


def _trains(method: str) -> bool:
    from task.methods import METHODS

    return method not in METHODS or METHODS[method].trains


def at_round(run: Run, rounds: int) -> Run | None:
    """The run as it stood after ``rounds`` rounds (a complete run of that many), or None
    when it never got there. A run still going (extended, interrupted) counts once it is past.

    A run extended past its first budget (``server.num-rounds`` raised on resume) equals, up to
    that round, a run that stopped there (resume is exact: tests/server_app/test_resume.py), so
    its first ``rounds`` metrics rows, summarised as the server summarises a run, are that
    run's record. A table of 10-round runs then stays one budget after some of its runs go on
    to 20 (``server.num-rounds`` defines no setup, so they would share rows)."""
    from task.runs.run_dir import summarise  # the server's own summary of a run's rows

    if run.complete and (run.num_rounds == rounds or not _trains(run.method)):
        return run  # a method that trains nothing (zero-shot) is the same at every round
    rows = [m for m in run.metrics if int(m.get("round", 0)) <= rounds]
    if [int(m.get("round", 0)) for m in rows] != list(range(1, rounds + 1)):
        return None  # never got there (or a round is missing)
    keep = {k: v for k, v in (run.summary or {}).items() if k in ("run", "experiment")}
    config = {**run.config, "server.num-rounds": rounds}
    return Run(run.name, run.root, config, rows, summarise(rows, keep), finished_at(run))
