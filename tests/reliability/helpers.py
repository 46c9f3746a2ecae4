"""Shared helpers: run the real ServerApp loop and ClientApp in-process on a tiny setup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from client_app.app import build_app
from server_app.loop import run_server
from testkit.faults import fault_mod
from testkit.grid import InProcessGrid, task_identity
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config


def setup_run(tmp: Path, model_dir: Path, num_clients: int = 3, **overrides: Any) -> dict:
    images = tmp / "images"
    if not images.is_dir():
        write_synthetic_images(images, TINY_CLASSES, per_class=8)
    return tiny_run_config(tmp, model_dir, images, num_clients=num_clients, **overrides)


def run(cfg: dict, num_nodes: int | None = None, **grid_kwargs: Any) -> InProcessGrid:
    grid = InProcessGrid(
        build_app([fault_mod]), cfg, num_nodes or cfg["data.num-clients"], **grid_kwargs
    )
    with task_identity():
        run_server(grid, cfg)
    return grid


def rows(cfg: dict) -> list[dict]:
    path = Path(cfg["run.dir"]) / cfg["run.name"] / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


def experiment(cfg: dict) -> str:
    state = Path(cfg["run.dir"]) / cfg["run.name"] / "state.json"
    return json.loads(state.read_text())["experiment_id"]


def client_dir(cfg: dict, partition: int) -> Path:
    return Path(cfg["client.private-dir"]) / experiment(cfg) / f"client-{partition}"
