"""Smoke test of the local-step benchmark on a tiny random CLIP (timings are not asserted)."""

import json

import pytest

from bench.local_step import markdown, run_model, targets, text_flops

ROW_KEYS = (
    "fast_s", "naive_s", "speedup_vs_naive", "floor_s", "fast_over_floor", "gemm_gflops",
    "floor_rule_of_thumb_s", "fast_over_floor_rule_of_thumb", "prompt_tokens",
    "truncation_abs_diff", "text_feature_max_abs_diff", "fp16_cache_abs_diff",
    "fast_vs_naive_abs_diff", "step_loss_abs_diff", "fast_phases_s", "buckets_s",
    "buckets_over_fast", "prompt_tokens_mean",
)  # fmt: skip


@pytest.mark.parametrize("name", ["tiny_backbone", "tiny_dual_encoder"])
def test_bench_rows_and_loss_agreement(request, name):
    backbone = request.getfixturevalue(name)
    full = backbone.text.max_positions  # 77 (CLIP) or 64 (the tiny BERT)
    methods = ["fedrsclip", "promptfl"]
    rows = run_model("tiny", backbone, False, batch=4, repeats=1, naive_repeats=1,
                     methods=methods, naive_methods=methods)  # fmt: skip
    assert [r["method"] for r in rows] == methods
    for row in rows:
        for key in ROW_KEYS:
            assert row[key] is not None, key
        for key in ("fast_s", "naive_s", "floor_s", "speedup_vs_naive", "fast_over_floor"):
            assert row[key] > 0
        assert row["prompt_tokens_mean"] <= row["prompt_tokens"]
        assert row["prompt_tokens"] < row["naive_prompt_tokens"] == full
        # identical fp32 image features: cutting the prompts to their real length is exact
        assert row["truncation_abs_diff"] < 1e-5
        assert row["text_feature_max_abs_diff"] < 1e-5
        assert row["fp16_cache_abs_diff"] < 1e-2
        assert row["step_loss_abs_diff"] < 1e-2
    assert rows[0]["prompts_per_class"] == 2 and rows[1]["prompts_per_class"] == 1
    table = markdown(rows)
    assert "| tiny | fedrsclip |" in table and "| tiny | promptfl |" in table
    assert targets(rows) == {}  # targets are checked on the ViT-B/16 row only


def test_flop_count_scales_with_sequences_and_length(tiny_backbone, tiny_dual_encoder):
    one = text_flops(tiny_backbone, [8] * 10)
    two = text_flops(tiny_backbone, [8] * 20)
    assert two["forward"] == 2 * one["forward"]
    longer = text_flops(tiny_backbone, [16] * 10)
    assert longer["forward"] > 2 * one["forward"]  # attention is quadratic
    assert one["forward"] < one["fwd_bwd_frozen"] < one["fwd_bwd_rule_of_thumb"]
    assert one["fwd_bwd_rule_of_thumb"] == 3 * one["forward"]
    mixed = text_flops(tiny_backbone, [8] * 5 + [16] * 5)
    assert one["forward"] < mixed["forward"] < longer["forward"]
    # same widths and depth (32, 64, 2 layers, projection 16): a BERT-family tower differs only
    # by its pooler's W x W layer, once per sequence
    bert = text_flops(tiny_dual_encoder, [8] * 10)
    assert bert["forward"] - one["forward"] == 10 * 2 * 32 * 32


def test_main_writes_json_without_models(tmp_path, monkeypatch):
    """The command's JSON shape, with the model loop stubbed out (no 150M-parameter CLIP here)."""
    import bench.local_step as bench

    monkeypatch.setattr(bench, "run_model", lambda *a, **k: [])
    monkeypatch.setattr(bench, "vitb16_backbone", lambda tok: None)
    out = tmp_path / "r.json"
    result = bench.main(["--out", str(out), "--models", "vit-b16"])
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("python -m bench.local_step")
    for key in ("date", "machine", "targets", "rows", "repeats"):
        assert key in saved and key in result
    assert saved["machine"]["threads"] == 2 and saved["machine"]["torch"]
