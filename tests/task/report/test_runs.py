"""task.report.runs: old run directories load, missing keys read at today's defaults."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from task.report import app_defaults, federation_label, load_runs

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_defaults_come_from_the_config_dataclasses_and_match_pyproject() -> None:
    listed = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert app_defaults() == listed  # the report says "differs from pyproject.toml"


def test_an_old_config_loads_with_missing_keys_at_todays_defaults(tmp_path: Path) -> None:
    root = tmp_path / "old-run"
    root.mkdir()
    old = {"method.name": "promptfl", "loss.removed-since": 3, "data.partitioner": "dirichlet"}
    (root / "config.json").write_text(json.dumps(old))
    (root / "summary.json").write_text(json.dumps({"final_round": 3}))
    (run,) = load_runs(tmp_path)
    assert run.config == old  # kept as recorded: its keys define its setup
    assert (run.method, run.seed, run.num_rounds) == ("promptfl", 0, 3)
    assert run.complete  # server.num-rounds taken at today's default (3)
    assert federation_label(run.config) == "Fed-UCMerced 10c Dir(0.5)"
