"""Smoke test of the local-step benchmark on a tiny random CLIP (timings are not asserted)."""

import argparse

from bench.local_step import bench_model, markdown, text_flops


def test_bench_rows_and_loss_agreement(tiny_backbone):
    methods = ["fedrsclip", "promptfl"]
    args = argparse.Namespace(batch=4, repeats=1, naive_repeats=1, methods=methods)
    rows = bench_model("tiny", tiny_backbone, False, args)
    assert [r["method"] for r in rows] == ["fedrsclip", "promptfl"]
    for row in rows:
        for key in ("fast_s", "naive_s", "floor_s", "speedup_vs_naive", "fast_over_floor"):
            assert row[key] > 0
        assert row["truncation_abs_diff"] < 1e-5
        assert row["fp16_cache_abs_diff"] < 1e-2
    assert rows[0]["prompts_per_class"] == 2 and rows[1]["prompts_per_class"] == 1
    assert "| tiny | fedrsclip |" in markdown(rows)


def test_flop_count_scales_with_sequences_and_length(tiny_backbone):
    one = text_flops(tiny_backbone, n_seq=10, length=8)
    assert text_flops(tiny_backbone, n_seq=20, length=8) == 2 * one
    assert text_flops(tiny_backbone, n_seq=10, length=16) > 2 * one  # attention is quadratic
