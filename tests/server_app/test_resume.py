"""Resume: a run interrupted mid-round and restarted ends exactly like one that never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from client_app.app import app as client_app
from server_app.loop import run_server
from task.report.runs import at_round, load_runs
from task.runs.run_dir import RunDirError
from testkit.grid import InProcessGrid, task_identity
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config

SUMMARY_COMPARED = (
    "final_round",
    "final_personalised_accuracy",
    "final_global_accuracy",
    "best_personalised_accuracy",
    "zeroshot_accuracy",
    "final_train_loss",
)
COMPARED = ("round", "train_loss", "personalised_accuracy", "global_accuracy", "personalised_loss")


def _run(cfg: dict, fail_after: int | None = None) -> InProcessGrid:
    grid = InProcessGrid(client_app, cfg, 3, fail_after=fail_after)
    with task_identity():
        run_server(grid, cfg)
    return grid


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _private(tmp: Path, run_dir: Path, client: int, r: int) -> torch.Tensor:
    exp = json.loads((run_dir / "state.json").read_text())["experiment_id"]
    path = tmp / "private" / exp / f"client-{client}" / f"private-r{r:05d}.safetensors"
    return load_file(str(path))["private"]


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path: Path, tiny_clip_dir) -> None:
    images = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=8)
    base = tiny_run_config(tmp_path, tiny_clip_dir, images, **{"server.num-rounds": 3})
    ref_cfg = {**base, "run.name": "straight"}
    _run(ref_cfg)

    # Same experiment under another name: 2 rounds, then extended to 3 and killed after two of
    # round 3's clients trained (their round-3 private prompts are already on disk), then resumed.
    cfg = {**base, "run.name": "resumed"}
    _run({**cfg, "server.num-rounds": 2})
    two_rounds = json.loads((tmp_path / "runs" / "resumed" / "summary.json").read_text())
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, fail_after=2)
    run_dir = tmp_path / "runs" / "resumed"
    assert [r["round"] for r in _rows(run_dir)] == [1, 2]
    grid = _run(cfg)
    assert sum(m.metadata.message_type == "train" for m in grid.sent) == 3  # round 3 only

    ref_dir = tmp_path / "runs" / "straight"
    ref, got = _rows(ref_dir), _rows(run_dir)
    assert [[r[k] for k in COMPARED] for r in got] == [[r[k] for k in COMPARED] for r in ref]
    for r_ref, r_got in zip(ref, got, strict=True):
        for pid, c in r_ref["per_client"].items():
            assert r_got["per_client"][pid]["personalised_accuracy"] == c["personalised_accuracy"]
            assert r_got["per_client"][pid]["train_loss"] == c["train_loss"]
    a = load_file(str(ref_dir / "checkpoints" / "global-r00003.safetensors"))["shared_ctx"]
    b = load_file(str(run_dir / "checkpoints" / "global-r00003.safetensors"))["shared_ctx"]
    assert torch.equal(a, b)
    for client in range(3):
        assert torch.equal(
            _private(tmp_path, ref_dir, client, 3), _private(tmp_path, run_dir, client, 3)
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_round"] == 3
    # The report's view of the 3-round run at round 2 is the 2-round run's record.
    (straight,) = [r for r in load_runs(tmp_path / "runs") if r.name == "straight"]
    cut = at_round(straight, 2)
    assert cut is not None and cut.summary is not None
    for key in SUMMARY_COMPARED:
        assert cut.summary[key] == two_rounds[key], key

    # A finished run restarted does no new round; a changed experiment refuses to resume.
    grid = _run(cfg)
    assert grid.sent == []
    with pytest.raises(RunDirError, match="train.lr"):
        _run({**cfg, "train.lr": 0.5})
    with pytest.raises(RunDirError, match="run.resume=false"):
        _run({**cfg, "run.resume": False})
