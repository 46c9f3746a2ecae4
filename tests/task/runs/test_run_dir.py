"""RunDir: a torn round (its checkpoint written, its metrics line not) is dropped on resume, with
any server state saved beside it; the metrics cache follows every write."""

from __future__ import annotations

import json

import torch

from task.runs.run_dir import RunDir


def test_a_torn_round_is_dropped_on_resume(tmp_path):
    run = RunDir.open(tmp_path, "torn", {"k": 1}, resume=True)
    for r in range(4):  # rounds 0..3 checkpointed ...
        run.save_checkpoint(r, {"s": torch.full((2,), float(r))})
        run.save_extra("experts", r, {"p0": torch.zeros(1)})
    for r in (1, 2):  # ... but round 3 never got its metrics line: the process died in between
        run.append_metrics({"round": r, "train_loss": 1.0 / r})
    again = RunDir.open(tmp_path, "torn", {"k": 1}, resume=True)
    assert again.last_completed_round() == 2
    again.truncate_after(2)
    names = sorted(p.name for p in (again.root / "checkpoints").iterdir())
    assert names == [
        "experts-r00000.safetensors", "experts-r00001.safetensors", "experts-r00002.safetensors",
        "global-r00000.safetensors", "global-r00001.safetensors", "global-r00002.safetensors",
    ]  # fmt: skip
    assert [m["round"] for m in again.read_metrics()] == [1, 2]
    # A metrics line for a round beyond the checkpoints is torn too: dropped.
    again.append_metrics({"round": 5, "train_loss": 0.1})
    assert again.last_completed_round() == 2
    again.truncate_after(2)
    assert [json.loads(x)["round"] for x in again.metrics_path.read_text().splitlines()] == [1, 2]


def test_metrics_cache_sees_every_write(tmp_path):
    run = RunDir.open(tmp_path, "c", {}, resume=True)
    run.append_metrics({"round": 1, "evaluation": "fused-pending"})
    assert run.read_metrics()[-1]["evaluation"] == "fused-pending"
    run.update_metrics(1, {"evaluation": "fused", "personalised_accuracy": 0.5})
    assert run.read_metrics() == RunDir(run.root, run.experiment_id).read_metrics()
    rows = run.read_metrics()
    rows[0]["round"] = 99  # a copy: the cache is not the caller's to change
    assert run.read_metrics()[0]["round"] == 1
