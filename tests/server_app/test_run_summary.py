"""A run reports the frozen model's zero-shot accuracy on the same test images once, and ends
with a short table of what it reached, what it cost and where its files are."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tests.reliability.helpers import rows, run, setup_run


def test_zeroshot_reference_once_and_summary_table(tmp_path, tiny_clip_dir, caplog):
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 2})
    with caplog.at_level(logging.INFO, logger="server_app.loop"):
        run(cfg)
    metrics = rows(cfg)
    assert 0.0 <= metrics[0]["zeroshot_accuracy"] <= 1.0
    assert "zeroshot_accuracy" not in metrics[1]  # asked for once per run
    root = Path(cfg["run.dir"]) / cfg["run.name"]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["zeroshot_accuracy"] == metrics[0]["zeroshot_accuracy"]
    up = summary["bytes_up_per_client_round"]
    assert up == sum(m["bytes_from_clients"] / 3 for m in metrics) / 2
    table = next(r.message for r in caplog.records if "zero-shot, same test images" in r.message)
    assert f"{100 * summary['zeroshot_accuracy']:.1f}%" in table
    assert "points)" in table and str(root) in table and "curves.png" in table


def test_zeroshot_method_reports_itself(tmp_path, tiny_clip_dir):
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"method.name": "zeroshot"})
    run(cfg)
    first = rows(cfg)[0]
    assert first["zeroshot_accuracy"] == first["personalised_accuracy"]
