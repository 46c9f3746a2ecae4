"""End to end: a real `flwr run .` simulation (tiny random CLIP, synthetic images, 3 x 2 rounds).

testkit.flwr_run gives the detached local SuperLink its own FLWR_HOME and ports and stops exactly
that process group afterwards, also when the run fails.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from testkit.flwr_run import run_flwr
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_flwr_run_simulation_end_to_end(tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=8)
    cfg = tiny_run_config(tmp_path, tiny_clip_dir, images)
    out = run_flwr(tmp_path, cfg, num_supernodes=3)

    run = tmp_path / "runs" / "tiny"
    assert (run / "summary.json").is_file(), out[-5000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["train_loss"])
        assert 0.0 <= r["personalised_accuracy"] <= 1.0
        assert 0.0 <= r["global_accuracy"] <= 1.0
        assert r["clients_ok"] == 3 and r["clients_failed"] == 0 and r["replies_rejected"] == 0
        assert sorted(r["per_client"]) == ["0", "1", "2"]
        for c in r["per_client"].values():
            assert c["bytes_received"] > 0 and c["bytes_sent"] > 0
            assert 0.0 <= c["personalised_accuracy"] <= 1.0
        assert r["shared_payload_bytes"] == 4 * 32 * 4  # n_ctx x width x fp32 (tiny CLIP)
        assert r["round_seconds"] > 0
        # Every array key that ever reached the server: the shared prompt and nothing else.
        assert r["reply_array_keys"] == ["shared_ctx"]

    state = json.loads((run / "state.json").read_text())
    client_dirs = [tmp_path / "private" / state["experiment_id"] / f"client-{i}" for i in range(3)]
    privates = [load_file(str(d / "private-r00002.safetensors"))["private"] for d in client_dirs]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(privates[i], privates[j])

    initial = load_file(str(run / "checkpoints" / "global-r00000.safetensors"))["shared_ctx"]
    final = load_file(str(run / "checkpoints" / "global-r00002.safetensors"))["shared_ctx"]
    assert not torch.equal(initial, final)
    assert (run / "curves.png").stat().st_size > 0
    assert json.loads((run / "config.json").read_text())["data.num-clients"] == 3
