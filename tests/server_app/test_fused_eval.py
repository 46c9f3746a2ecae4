"""server.eval-mode=fused: one message per round, and exactly the accuracies of separate
evaluation messages (same model, same private prompt, same images)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from testkit.models import save_tiny_clip
from tests.reliability.helpers import rows, run, setup_run

EVAL_KEYS = ("personalised_accuracy", "global_accuracy", "personalised_loss", "zeroshot_accuracy")


def _run(tmp: Path, model: Path, mode: str, **overrides) -> list[dict]:
    cfg = setup_run(
        tmp / mode,
        model,
        **{"server.num-rounds": 3, "server.eval-mode": mode, "run.name": mode, **overrides},
    )
    grid = run(cfg)
    return rows(cfg), grid


@pytest.mark.parametrize("method", ["fedrsclip", "local", "fedpgp"])
def test_fused_metrics_equal_separate(tmp_path, tiny_clip_dir, method):
    fused, fused_grid = _run(tmp_path, tiny_clip_dir, "fused", **{"method.name": method})
    separate, sep_grid = _run(tmp_path, tiny_clip_dir, "separate", **{"method.name": method})
    assert [r["round"] for r in fused] == [r["round"] for r in separate] == [1, 2, 3]
    for f, s in zip(fused, separate, strict=True):
        assert f["evaluated"] and s["evaluated"]
        for key in EVAL_KEYS:
            a, b = f.get(key), s.get(key)
            assert (a is None and b is None) or a == b or (math.isnan(a) and math.isnan(b)), (
                key,
                f["round"],
                a,
                b,
            )
        assert f["train_loss"] == s["train_loss"]
        for pid, values in s["per_client"].items():
            assert f["per_client"][pid]["personalised_accuracy"] == values["personalised_accuracy"]
    assert [r["evaluation"] for r in fused] == ["fused", "fused", "fused"]
    # One message per round (plus the final evaluation), against two.
    kinds = [m.metadata.message_type for m in fused_grid.sent]
    assert kinds.count("train") == 9 and kinds.count("evaluate") == 3
    assert len(sep_grid.sent) == 18


def test_fused_download_bytes_per_round_near_the_payload(tmp_path):
    """With ViT-B/16's prompt width (4 x 512 numbers = 8,192 B), a round's download is the
    train message alone: within 1.1x of the payload (separate evaluation: about 2x)."""
    model = save_tiny_clip(tmp_path / "wide", text_width=512)
    fused, _ = _run(tmp_path, model, "fused")
    separate, _ = _run(tmp_path, model, "separate")
    assert fused[0]["shared_payload_bytes"] == 8192
    for r in fused[:-1]:  # the last round also sends the final evaluate message
        per_client = r["bytes_to_clients"] / 3
        assert per_client <= 1.1 * r["shared_payload_bytes"], r
    assert fused[0]["bytes_to_clients"] < 0.6 * separate[0]["bytes_to_clients"]


def test_pending_evaluation_survives_a_crash(tmp_path, tiny_clip_dir):
    """A run killed during round 3's training, when round 2's evaluation was still pending:
    resumed, round 3's messages carry it, and every line equals an uninterrupted run's."""
    whole, _ = _run(tmp_path, tiny_clip_dir, "fused")
    cfg = setup_run(tmp_path / "r", tiny_clip_dir, **{"server.num-rounds": 3, "run.name": "r"})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, fail_after=7)  # 3 + 3 train messages, then one of round 3
    cut = rows(cfg)
    assert [r["round"] for r in cut] == [1, 2]
    assert cut[1]["evaluation"] == "fused-pending" and not cut[1]["evaluated"]
    run(cfg)
    resumed = rows(cfg)
    for a, b in zip(resumed, whole, strict=True):
        for key in EVAL_KEYS:
            assert a.get(key) == b.get(key), (key, a["round"])
        assert a["evaluated"] and a["evaluation"] == "fused"
