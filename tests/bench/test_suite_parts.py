"""The performance suite's other parts: byte accounting, the simulation split, the doc render.

Timings are never asserted; what is checked is that the numbers are computed from what they
claim to be computed from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.message_bytes import markdown as bytes_markdown
from bench.message_bytes import measure
from bench.render import render
from bench.simulation import markdown as sim_markdown
from bench.simulation import summarise_rows


def test_message_bytes_counts_the_shared_prompt(tmp_path: Path) -> None:
    fp32 = measure(tmp_path, text_width=64, fp16=False, clients=2, eval_mode="separate")
    fp16 = measure(tmp_path, text_width=64, fp16=True, clients=2, eval_mode="separate")
    fused = measure(tmp_path, text_width=64, fp16=False, clients=2, eval_mode="fused")
    payload = 4 * 64 * 4
    assert fp32["fp32_payload_bytes"] == payload
    # the prompt crosses the wire in both train messages and in the evaluate download
    for kind in ("train_down", "train_up", "evaluate_down"):
        assert fp32[f"{kind}_bytes"] > payload
        assert fp32[f"{kind}_bytes"] - fp16[f"{kind}_bytes"] == pytest.approx(payload / 2, abs=8)
    assert fp32["evaluate_up_bytes"] < 1024  # metrics only
    # fused: no evaluate message in the middle of a run; the round's download is one prompt
    assert "evaluate_down_bytes" not in fused
    assert fused["round_down_bytes"] < fp32["round_down_bytes"] - payload
    assert "| 64 | fp32 | separate |" in bytes_markdown([fp32, fp16, fused])


def _row(rnd: int, seconds: float, clients: int) -> dict:
    per = {
        str(i): {"train_features_s": 1.0 if rnd == 1 else 0.0, "train_compute_s": 2.0,
                 "eval_features_s": 0.0, "eval_compute_s": 0.5}
        for i in range(clients)
    }  # fmt: skip
    return {"round": rnd, "round_seconds": seconds, "per_client": per,
            "shared_payload_bytes": 4096, "bytes_to_clients": 9000 * clients,
            "bytes_from_clients": 5000 * clients, "personalised_accuracy": 0.5}  # fmt: skip


def test_simulation_split_adds_up() -> None:
    rows = [_row(1, 10.0, 4), _row(2, 6.0, 4), _row(3, 6.0, 4)]
    out = summarise_rows(rows, wall=30.0, actors=2)
    assert out["setup_s"] == 8.0
    assert out["client_cpu_s"] == {"features": 4.0, "train": 24.0, "evaluate": 6.0}
    assert out["overhead_s"] == pytest.approx(22.0 - 34.0 / 2)
    assert out["round_median_after_first_s"] == 6.0
    assert out["bytes_per_client_round1"] == {"payload": 4096, "down_total": 9000.0,
                                              "up_total": 5000.0}  # fmt: skip
    mem = {"peak_clientapp_actor_pss": 1.0, "peak_simulation_pss": 2.0}
    table = sim_markdown([{**out, "case": "c", "actors": 2, "memory_mb": mem,
                           "feature_cache_bytes": 0}])  # fmt: skip
    assert table.count("\n") == 3


def test_render_replaces_only_marked_blocks(tmp_path: Path) -> None:
    rows = [{"text_width": 8, "fp16_transport": False, "fp32_payload_bytes": 128,
             **{f"{k}_{x}": 1.0 for k in ("train_down", "train_up", "evaluate_down",
                                          "evaluate_up") for x in ("bytes", "over_payload")},
             "round_down_over_payload": 2.0, "round_up_over_payload": 1.0}]  # fmt: skip
    (tmp_path / "message_bytes.json").write_text(json.dumps({"command": "c", "rows": rows}))
    text = "prose\n<!-- bench:message_bytes -->\nold\n<!-- /bench:message_bytes -->\nmore\n"
    text += "<!-- bench:simulation -->\nkept\n<!-- /bench:simulation -->\n"
    new, done = render(text, tmp_path)
    assert done == ["message_bytes"]
    assert "\nold\n" not in new and "| 8 | fp32 | separate | 128 |" in new
    assert new.startswith("prose\n") and "more\n" in new and "kept" in new


def test_bench_and_testkit_never_import_the_tests() -> None:
    """bench/ runs from an install without tests/: shared helpers live in testkit/."""
    repo = Path(__file__).resolve().parents[2]
    offenders = [
        str(p.relative_to(repo))
        for pkg in ("bench", "testkit")
        for p in (repo / pkg).rglob("*.py")
        if re.search(r"^\s*(from|import) tests\b", p.read_text(), re.M)
    ]
    assert offenders == []


def test_deploy_timeline_splits_a_message_life() -> None:
    from bench.deploy_overhead import markdown as deploy_markdown
    from bench.deploy_overhead import timeline

    def client(t0: float) -> dict:
        return {
            "train_at_process-start": t0 + 1.0, "train_at_imports-start": t0 + 1.5,
            "train_at_imports-done": t0 + 4.5, "train_at_handler-start": t0 + 4.6,
            "train_at_reply": t0 + 6.0, "train_backbone_s": 0.4, "train_features_s": 0.1,
            "train_compute_s": 0.9, "eval_at_reply": 99.0,
        }  # fmt: skip

    rows = [{"round": 1}] + [
        {"round": r, "train_sent_at": 100.0 * r, "train_received_at": 100.0 * r + 7.0,
         "per_client": {"0": client(100.0 * r), "1": client(100.0 * r)}}
        for r in (2, 3)
    ]  # fmt: skip
    parts = timeline(rows, "train")
    assert parts == {
        "queue_spawn": 1.0, "python_start": 0.5, "imports": 3.0, "to_handler": 0.1,
        "model_load": 0.4, "features": 0.1, "compute": 0.9, "reply": 1.0,
    }  # fmt: skip
    case = {
        "rounds": [9.0, 7.0],
        "median_round_after_first_s": 7.0,
        "load1": 1.0,
        "timeline_train": parts,
        "bytes_down_per_client_round": 9000,
        "payload_bytes": 8192,
    }
    table = deploy_markdown({"fused": case, "process_start": {"process_s": 5, "imports_s": 3,
                                                               "load_s": 1}})  # fmt: skip
    assert "| fused | 9.0, 7.0 | 7.0 | 1.10x | 1.00 |" in table and "| imports | 3.00 |" in table
