"""The ServerApp's preflight before round 1 (task.runs.preflight through server_app.loop.preflight),
and folder=words class names end to end in-process: shared and per-node (local) federations."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from client_app.app import app as client_app
from server_app.loop import run_server
from task.config import parse_app_config
from task.data import DataError
from task.data.source import get_federation
from testkit.grid import InProcessGrid, task_identity
from testkit.images import write_synthetic_images
from testkit.run_config import tiny_run_config

FOLDERS = ["01_River", "02_Beach", "03_Forest"]
MAPPING = "01_River=river,02_Beach=beach,03_Forest=forest"


def _cfg(tmp: Path, model: Path, class_names: str, **extra) -> dict:
    images = write_synthetic_images(tmp / "scenes", FOLDERS, per_class=6)
    return tiny_run_config(
        tmp,
        model,
        images,
        num_clients=2,
        **{
            "method.name": "zeroshot",
            "server.num-rounds": 1,
            "data.partitioner": "even",
            "data.min-client-size": 2,
            "data.class-names": class_names,
            **extra,
        },
    )


def _run(cfg: dict, grid: InProcessGrid | None = None) -> None:
    grid = grid or InProcessGrid(client_app, cfg, cfg["data.num-clients"])
    with task_identity():
        run_server(grid, cfg)


def test_server_preflight_fails_before_anything_is_written(
    tmp_path: Path, tiny_clip_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path, tiny_clip_dir, "river,beach,forest")
    with caplog.at_level(logging.ERROR), pytest.raises(DataError, match="01_River=river"):
        _run(cfg)
    assert "preflight FAILED" in caplog.text and "key to fix: data.class-names" in caplog.text
    assert not (tmp_path / "runs").exists()


def test_mapped_folders_run_and_the_federation_is_built_once(
    tmp_path: Path,
    tiny_clip_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = _cfg(tmp_path, tiny_clip_dir, MAPPING)
    with caplog.at_level(logging.INFO):
        _run(cfg)
    assert "preflight ok" in caplog.text and "01_River -> river" in caplog.text
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "partition.json").read_text())
    assert manifest["class_names"] == ["river", "beach", "forest"]
    assert manifest["label_map"] == {
        "imagefolder": {"01_River": "river", "02_Beach": "beach", "03_Forest": "forest"}
    }
    assert (run / "summary.json").is_file()
    data = parse_app_config(cfg).core.data
    # The preflight's listing is the one the run used: built once in this process.
    calls = []
    import task.data.source as source

    original = source.build_federation
    monkeypatch.setattr(source, "build_federation", lambda cfg: calls.append(cfg) or original(cfg))
    get_federation(data)
    assert calls == []  # cached by the preflight: not listed again


def test_local_nodes_with_folder_mapping(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """Per-node folders spelled 01_River etc.: the run config's mapping labels every node."""
    nodes = [
        write_synthetic_images(tmp_path / f"inst-{i}", folders, per_class=6, seed=i)
        for i, folders in enumerate([["01_River", "02_Beach"], ["02_Beach", "03_Forest"]])
    ]
    cfg = _cfg(tmp_path, tiny_clip_dir, MAPPING, **{"data.partitioner": "local"})
    cfg["data.root"] = ""
    grid = InProcessGrid(client_app, cfg, 2)
    for nid, root in zip(grid.node_ids, nodes, strict=True):
        grid.contexts[nid].node_config["data-root"] = str(root)
    _run(cfg, grid)
    rows = (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(rows[-1])
    assert last["clients_ok"] == 2 and last["clients_failed"] == 0
    manifest = json.loads((tmp_path / "runs" / "tiny" / "partition.json").read_text())
    assert manifest["class_names"] == ["river", "beach", "forest"]
