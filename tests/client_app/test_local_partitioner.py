"""data.partitioner=local end to end in one process: each node reads only its node-config
data-root, the server lists no data, and data.holdout=val evaluates on the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import MessageType
from safetensors import safe_open

import task.data.federation as federation
from client_app.app import app as client_app
from server_app.loop import run_server
from task.config import ConfigError, parse_app_config
from testkit.grid import InProcessGrid, task_identity
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config
from tests.client_app.test_client_app import _message

# Each institution has its own classes (label skew) and its own folder spelling.
NODE_CLASSES = [["river", "beach"], ["forest", "Farm"], ["Port", "beach"]]


def _nodes(tmp: Path) -> list[Path]:
    return [
        write_synthetic_images(tmp / f"inst-{i}", classes, per_class=8, seed=i)
        for i, classes in enumerate(NODE_CLASSES)
    ]


def _local_config(tmp: Path, model: Path, **overrides) -> dict:
    cfg = tiny_run_config(tmp, model, "", **overrides)
    cfg.update(
        {
            "data.root": "",
            "data.partitioner": "local",
            "data.class-names": ",".join(TINY_CLASSES),
        }
    )
    return cfg


def test_local_needs_data_root_and_no_server_side_eval(tmp_path: Path, tiny_clip_dir) -> None:
    cfg = _local_config(tmp_path, tiny_clip_dir)
    with pytest.raises(ConfigError, match="global-eval"):
        parse_app_config({**cfg, "server.global-eval": "server"})
    with pytest.raises(ConfigError, match="class-names"):
        parse_app_config({**cfg, "data.class-names": ""})
    grid = InProcessGrid(client_app, cfg, 1)
    ctx = grid.contexts[grid.node_ids[0]]
    with pytest.raises(ConfigError, match="data-root"):
        client_app(_message(MessageType.TRAIN, {"shared_ctx": torch.zeros(4, 32)}, 1), ctx)


@pytest.mark.slow
def test_local_run_reads_only_node_folders(
    tmp_path: Path, tiny_clip_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = _nodes(tmp_path)
    cfg = _local_config(
        tmp_path,
        tiny_clip_dir,
        **{"data.val-fraction": 0.25, "data.holdout": "val", "server.num-rounds": 2},
    )
    scanned: list[tuple[str, bool]] = []
    real_scan = federation.scan_image_folder

    def spy(root, dataset, local=False):
        scanned.append((str(root), local))
        return real_scan(root, dataset, local=local)

    monkeypatch.setattr(federation, "scan_image_folder", spy)
    monkeypatch.setattr(federation, "load_listing", None)  # a shared listing would crash
    grid = InProcessGrid(client_app, cfg, 3)
    for i, nid in enumerate(grid.node_ids):
        grid.contexts[nid].node_config.update(
            {"data-root": str(roots[i]), "cache-dir": str(tmp_path / f"cache-{i}")}
        )
    with task_identity():
        run_server(grid, cfg)

    assert scanned and {r for r, _ in scanned} == {str(r) for r in roots}
    assert all(local for _, local in scanned)
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "partition.json").read_text())
    assert manifest["partitioner"] == "local" and manifest["data_visible_to_server"] is False
    assert manifest["clients"] == [] and manifest["class_names"] == TINY_CLASSES
    assert not (tmp_path / "features").exists()  # the run config's cache.dir: nobody used it

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["clients_ok"] == 3 and last["clients_failed"] == 0
    assert 0.0 <= last["global_accuracy"] <= 1.0  # from the clients' replies
    for i, root in enumerate(roots):
        # holdout=val: each client evaluated on its val split (16 images: 4 test, 3 val)
        assert last["per_client"][str(i)]["num_test"] == 3
        ids: set[str] = set()
        for path in (tmp_path / f"cache-{i}").glob("*.safetensors"):
            with safe_open(str(path), framework="pt") as f:
                ids |= set(json.loads(f.metadata()["ids"]))
        own = {f"imagefolder/{p.relative_to(root).as_posix()}" for p in root.rglob("*.png")}
        assert ids and ids <= own  # only its own images, and not its withheld test split
        assert len(ids) == 16 - 4


def test_node_data_root_replaces_data_root_for_shared_partitioners(
    tmp_path: Path, tiny_clip_dir
) -> None:
    """Other partitioners: data-root is this node's copy of the shared dataset (another path)."""
    copy = write_synthetic_images(tmp_path / "node-copy", TINY_CLASSES, per_class=8)
    cfg = tiny_run_config(tmp_path, tiny_clip_dir, tmp_path / "server-path-not-on-this-node")
    grid = InProcessGrid(client_app, cfg, 3, node_config={"data-root": str(copy)})
    ctx = grid.contexts[grid.node_ids[1]]
    reply = client_app(_message(MessageType.TRAIN, {"shared_ctx": torch.zeros(4, 32)}, 1), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content["metrics"]["num-examples"] > 0
