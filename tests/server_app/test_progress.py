"""Watching a run: each round's line shows the evaluation that arrived with it, the time left,
a word about round 1's feature extraction, TensorBoard scalars and the zero-shot line."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from task.runs.run_dir import curves_figure, summary_table
from tests.reliability.helpers import rows, run, setup_run


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "server_app.loop"]


@pytest.mark.parametrize("mode", ["fused", "separate"])
def test_round_lines_show_each_evaluation_when_it_arrives(tmp_path, tiny_clip_dir, caplog, mode):
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 3, "server.eval-mode": mode})
    with caplog.at_level(logging.INFO, logger="server_app.loop"):
        run(cfg)
    lines = _lines(caplog)
    assert any(line.startswith("round 1: the clients first extract") for line in lines)
    rounds = {int(m.group(1)): line for line in lines if (m := re.match(r"round (\d+): t", line))}
    assert sorted(rounds) == [1, 2, 3]
    pattern = r"round {} eval: personalised \d+\.\d% global \d+\.\d%"
    if mode == "fused":  # round r's accuracy comes back with round r + 1's replies
        assert "eval:" not in rounds[1]
        assert re.search(pattern.format(1) + r" \(zero-shot \d+\.\d%\)", rounds[2])
        assert re.search(pattern.format(2), rounds[3]) and re.search(pattern.format(3), rounds[3])
    else:
        for r in (1, 2, 3):
            assert re.search(pattern.format(r), rounds[r]), rounds[r]
    assert sum("left (" in line for line in lines) == 2  # after rounds 1 and 2
    out = rows(cfg)
    final = out[-1]["personalised_accuracy"]
    assert f"round 3 eval: personalised {100 * final:.1f}%" in rounds[3]


def test_tensorboard_events_hold_every_round(tmp_path, tiny_clip_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 2})
    run(cfg)
    log_dir = Path(cfg["run.dir"]) / cfg["run.name"] / "tensorboard"
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"accuracy/personalised", "accuracy/global", "accuracy/zeroshot", "loss/train"} <= tags
    by_round = {e.step: e.value for e in events.Scalars("accuracy/personalised")}
    expected = {r["round"]: r["personalised_accuracy"] for r in rows(cfg)}
    assert by_round == pytest.approx(expected)
    steps = [e.step for e in events.Scalars("loss/train")]
    assert steps == [1, 2]


def test_no_tensorboard_when_switched_off(tmp_path, tiny_clip_dir):
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 1, "run.tensorboard": False})
    run(cfg)
    assert not (Path(cfg["run.dir"]) / cfg["run.name"] / "tensorboard").exists()


def test_curves_have_a_dashed_zero_shot_line():
    metrics = [
        {"round": 1, "personalised_accuracy": 0.6, "global_accuracy": 0.5,
         "zeroshot_accuracy": 0.4, "train_loss": 1.0},
        {"round": 2, "personalised_accuracy": 0.7, "global_accuracy": 0.65, "train_loss": 0.8},
    ]  # fmt: skip
    ax = curves_figure(metrics, "t").axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["personalised", "global (shared only)", "zero-shot"]
    zs = ax.get_lines()[2]
    assert zs.get_linestyle() == "--" and list(zs.get_ydata()) == [0.4, 0.4]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels


def test_summary_says_when_personalised_falls_behind(tmp_path):
    from task.config import parse_app_config

    cfg = parse_app_config({"model.device": "cpu"})
    base = {"final_round": 3, "wall_seconds": 5.0}
    behind = {**base, "zeroshot_accuracy": 0.7, "final_personalised_accuracy": 0.6,
              "final_global_accuracy": 0.65}  # fmt: skip
    text = summary_table(behind, cfg, tmp_path, tmp_path / "c.png")
    assert "5.0 points below the global one" in text and "10.0 points below zero-shot" in text
    ahead = {**base, "zeroshot_accuracy": 0.5, "final_personalised_accuracy": 0.8,
             "final_global_accuracy": 0.7}  # fmt: skip
    assert "note" not in summary_table(ahead, cfg, tmp_path, tmp_path / "c.png")


def test_reply_counter_during_the_extraction_round_only_and_throttled(
    tmp_path, caplog, monkeypatch
):
    import server_app.progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    watch = progress.RunProgress(tmp_path, 1, 5, tensorboard=False)
    assert watch.reply_counter(1) is None  # nothing announced: no extraction to watch
    watch.announce_features(40, ".cache/features", "model")
    assert watch.reply_counter(2) is None  # later rounds read the cache
    counter = watch.reply_counter(1)
    with caplog.at_level(logging.INFO, logger="server_app.loop"):
        for t, n in [(3, 1), (5, 2), (14, 9), (15, 12), (30, 30), (31, 39), (32, 40)]:
            clock[0] = 100.0 + t
            counter(n, 40)
    lines = [line for line in _lines(caplog) if "extracted their features" in line]
    assert lines == [
        "round 1: 1/40 clients have extracted their features and replied (3 s)",
        "round 1: 9/40 clients have extracted their features and replied (14 s)",
        "round 1: 30/40 clients have extracted their features and replied (30 s)",
        "round 1: 40/40 clients have extracted their features and replied (32 s)",
    ]
