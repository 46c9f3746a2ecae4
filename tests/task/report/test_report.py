"""task.report: fake run directories (written with RunDir) -> docs/results.md + PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from task.report import (
    app_defaults,
    federation_label,
    group_runs,
    load_runs,
    main,
    run_stats,
    scaling_series,
)
from task.runs.run_dir import RunDir, summarise

MODEL = "openai/clip-vit-base-patch16"  # a hub id: W = 512 without loading anything


def make_run(
    base: Path,
    method: str,
    seed: int,
    accs: list[float],
    *,
    rounds: int | None = None,
    secs: float = 10.0,
    payload: int = 8192,
    finish: bool = True,
    per_client: dict | None = None,
    **extra,
) -> Path:
    cfg = {
        "model.name": MODEL,
        "method.name": method,
        "train.seed": seed,
        "train.lr": 0.002,
        "data.dataset": "ucmerced",
        "data.root": "/nonexistent/ucmerced",
        "data.num-clients": 10,
        "data.partitioner": "even",
        "prompt.n-ctx": 4,
        "server.num-rounds": rounds or len(accs),
        **extra,
    }
    name = f"{method}-{seed}-{abs(hash(json.dumps(extra, sort_keys=True))) % 1000}"
    run = RunDir.open(base, name, cfg, resume=False)
    run.save_checkpoint(0, {"shared_ctx": torch.zeros(4, 512)})
    for r, acc in enumerate(accs, 1):
        run.append_metrics(
            {
                "round": r,
                "personalised_accuracy": acc,
                "global_accuracy": None if method == "local" else acc - 0.05,
                "round_seconds": secs * (3 if r == 1 else 1),
                "bytes_to_clients": 100_000,
                "bytes_from_clients": 50_000,
                "shared_payload_bytes": payload,
                "per_client": per_client or {"0": {"train_seconds": secs / 2}},
            }
        )
        run.save_checkpoint(r, {"shared_ctx": torch.zeros(4, 512)})
    if finish:
        run.write_summary(summarise(run.read_metrics(), {"run": name}))
    return run.root


def test_report_tables_plots_and_honest_margins(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, (ours, base) in enumerate([(0.60, 0.70), (0.64, 0.72)]):
        make_run(runs, "fedrsclip", seed, [0.3, 0.5, ours], secs=30.0)
        make_run(runs, "promptfl", seed, [0.4, 0.6, base])
        make_run(runs, "fedrsclip-noot", seed, [0.3, 0.4, 0.5], secs=10.0)
    make_run(runs, "zeroshot", 0, [0.2], payload=0)
    make_run(runs, "local", 0, [0.5, 0.55, 0.58], payload=0)
    make_run(runs, "fedprox", 0, [0.3, 0.4], rounds=5, finish=False)  # interrupted
    make_run(runs, "promptfl", 0, [0.1, 0.2, 0.3], **{"train.lr": 0.5})  # another setup
    out = tmp_path / "docs" / "results.md"
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "preamble.md").write_text("STAND-IN WARNING\n")

    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()

    assert text.index("STAND-IN WARNING") < text.index("## Setup 1")
    assert "## Setup 2" in text and "`train.lr=0.5`" in text  # recipes never share a table
    assert "Fed-UCMerced 10c even" in text and MODEL in text
    # mean ± sample std over two seeds: fedrsclip 62.00 ± 2.83, promptfl 71.00 ± 1.41
    assert "| `fedrsclip` | 62.00 ± 2.83 |" in text
    assert "| `promptfl` | 71.00 ± 1.41 |" in text
    assert "| `zeroshot` | 20.00 (n=1) |" in text
    # fedrsclip loses to promptfl by 9 points and the report says so
    assert "| Fed-UCMerced 10c even | `fedrsclip` | `promptfl` | -9.00 |" in text
    # registry count (h x W = 4 x 512) and measured payload; zero for zeroshot/local
    assert "| 2,048 | 8,192 | 50,000 | 100,000 |" in text
    assert "| `local` | 0 | 3 | 58.00 (n=1) | — |" in text
    # OT cost: 30 s vs 10 s per steady round, per-client train 15 vs 5
    assert "| with / without OT | 3.00× | 3.00× |  |" in text
    # the interrupted run is listed, not averaged
    assert "`fedprox` | 2 / 5 |" in text.split("## Incomplete runs")[1]
    pngs = sorted(p.name for p in (tmp_path / "docs" / "results").glob("*.png"))
    assert pngs == [
        "setup1-fed-ucmerced-10c-even-accuracy.png",
        "setup1-fed-ucmerced-10c-even-bytes.png",
        "setup2-fed-ucmerced-10c-even-accuracy.png",
        "setup2-fed-ucmerced-10c-even-bytes.png",
    ]
    assert "](results/setup1-fed-ucmerced-10c-even-bytes.png)" in text


def test_run_stats_and_labels(tmp_path: Path) -> None:
    root = make_run(tmp_path, "fedrsclip", 0, [0.2, 0.4, 0.5], secs=4.0)
    (run,) = load_runs(tmp_path)
    assert run.complete
    st = run_stats(run)
    assert st.personalised == 0.5 and st.rounds == 3
    assert st.steady_round_seconds == 4.0 and st.wall_seconds == 12.0 + 4.0 + 4.0
    assert [c[3] for c in st.curve] == [150_000.0, 300_000.0, 450_000.0]
    # a torn last metrics line is ignored, as RunDir does
    with (root / "metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "perso')
    assert len(load_runs(tmp_path)[0].metrics) == 3
    cfg = {"data.cross": "ucmerced:5,aid:5", "data.partitioner": "dirichlet", "data.alpha": 0.1}
    assert federation_label(cfg) == "cross ucmerced:5+aid:5 Dir(0.1)"
    assert federation_label({"data.dataset": "optimal-31", "data.num-clients": 40}) == (
        "Fed-Optimal 40c even"
    )
    other_partition = {**cfg, "data.cross": "", "data.dataset": "ucmerced", "data.seed": 2}
    other_partition["data.num-clients"] = 10
    assert federation_label(other_partition) == "Fed-UCMerced 10c Dir(0.1) part. 2"


def test_another_partition_seed_is_another_column_of_the_same_setup(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "promptfl", 0, [0.3, 0.5])
    make_run(runs, "promptfl", 0, [0.3, 0.6], **{"data.seed": 1})
    out = tmp_path / "results.md"
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Setup 2" not in text and "Superseded" not in text
    assert "| `promptfl` | 50.00 (n=1) | 60.00 (n=1) |" in text
    assert "| method | Fed-UCMerced 10c even | Fed-UCMerced 10c even part. 1 |" in text


def test_key_added_later_does_not_split_a_setup(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "promptfl", 0, [0.4, 0.5])
    make_run(runs, "fedrsclip", 0, [0.4, 0.6], **{"loss.new-key": "auto"})
    out = tmp_path / "results.md"
    from task.report import load_runs, render

    defaults = {"train.lr": 0.002, "loss.new-key": "auto"}
    text = render(load_runs(runs), out, defaults=defaults)
    assert "## Setup 2" not in text
    assert "ran before `loss.new-key` existed" in text


def test_a_rerun_with_the_same_seed_supersedes_the_older_run(tmp_path: Path) -> None:
    import os

    from task.report import load_runs, render

    runs = tmp_path / "runs"
    old = make_run(runs, "fedrsclip", 0, [0.4, 0.5])
    new = make_run(runs, "fedrsclip", 0, [0.4, 0.7], **{"loss.new-key": "x"})
    os.utime(old / "summary.json", (1, 1))
    defaults = {"loss.new-key": "x"}
    text = render(load_runs(runs), tmp_path / "r.md", defaults=defaults)
    assert "| `fedrsclip` | 70.00 (n=1) |" in text
    sup = text.split("## Superseded runs")[1]
    assert f"`{old.name}`" in sup and f"`{new.name}`" in sup and "50.00 (n=1)" in sup


def test_cross_dataset_federation_reports_each_member_dataset(tmp_path: Path) -> None:
    """Clients 0-1 are UC Merced and 2-4 AID (data.cross order); each member's accuracy is
    pooled over its own clients' test images."""
    runs = tmp_path / "runs"
    per = {
        "0": {"num_test": 10, "personalised_accuracy": 0.5, "global_accuracy": 0.4},
        "1": {"num_test": 30, "personalised_accuracy": 0.9, "global_accuracy": 0.8},
        "2": {"num_test": 20, "personalised_accuracy": 0.2, "global_accuracy": 0.1},
        "3": {"num_test": 20, "personalised_accuracy": 0.4, "global_accuracy": 0.3},
        "4": {"num_test": 0, "personalised_accuracy": 1.0, "global_accuracy": 1.0},
    }
    cross = {"data.cross": "ucmerced:2,aid:3", "data.num-clients": 5}
    make_run(runs, "fedrsclip", 0, [0.3, 0.5], per_client=per, **cross)
    make_run(runs, "promptfl", 0, [0.3, 0.4])  # an ordinary federation: no breakdown
    out = tmp_path / "results.md"

    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()

    assert text.count("#### By member dataset") == 1
    assert "- test images (pooled over clients): 80 — one image = 1.25 points" in text
    section = text[text.index("#### By member dataset") :]
    assert "| method | ucmerced pers. | ucmerced global | aid pers. | aid global |" in section
    # ucmerced: (0.5*10 + 0.9*30) / 40 = 80.0; global (0.4*10 + 0.8*30) / 40 = 70.0
    # aid: (0.2*20 + 0.4*20) / 40 = 30.0 (client 4 has no test images); global 20.0
    row = next(line for line in section.splitlines() if line.startswith("| `fedrsclip`"))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "`fedrsclip`",
        "80.00 (n=1)",
        "70.00 (n=1)",
        "30.00 (n=1)",
        "20.00 (n=1)",
    ]


def test_scaling_plot_is_gain_over_zeroshot_across_sizes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "zeroshot", 0, [0.2], payload=0)
    make_run(runs, "promptfl", 0, [0.3, 0.5])
    out = tmp_path / "results.md"
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "-scaling.png" not in out.read_text()  # one size: nothing to plot

    n40 = {"data.num-clients": 40}
    make_run(runs, "zeroshot", 0, [0.3], payload=0, **n40)
    for seed, acc in enumerate([0.4, 0.5]):
        make_run(runs, "promptfl", seed, [0.2, acc], **n40)
    make_run(runs, "fedrsclip", 0, [0.2, 0.45], **{"data.num-clients": 20})  # no zero-shot
    make_run(runs, "fedrsclip-nodpa", 0, [0.2, 0.6])  # 10 clients only: no line to draw
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "![setup1-scaling](results/setup1-scaling.png)" in out.read_text()
    assert (tmp_path / "results" / "setup1-scaling.png").stat().st_size > 0

    groups = group_runs(load_runs(runs), app_defaults())
    (feds,) = groups.values()
    series = scaling_series(feds)
    assert list(series) == ["Fed-UCMerced even"]
    (promptfl,) = [series["Fed-UCMerced even"]["promptfl"]]
    assert [n for n, _, _ in promptfl] == [10, 40]
    assert promptfl[0][1] == pytest.approx(30.0)  # 50% - 20% zero-shot, 10 clients
    assert promptfl[1][1] == pytest.approx(15.0)  # mean(40, 50)% - 30%, 40 clients
    assert promptfl[1][2] == pytest.approx(100 * 0.0707107, rel=1e-4)  # sample std
    assert "fedrsclip" not in series["Fed-UCMerced even"]  # its federation has no zero-shot
    assert "fedrsclip-nodpa" not in series["Fed-UCMerced even"]  # one size


def test_variant_key_makes_a_method_row_not_a_setup(tmp_path: Path) -> None:
    """--variant-keys loss.alpha: a fedrsclip run with alpha off its default sits beside the
    default rows (same setup) as its own method, with its own margin to the best baseline."""
    runs = tmp_path / "runs"
    make_run(runs, "promptfl", 0, [0.3, 0.5])
    make_run(runs, "fedrsclip", 0, [0.3, 0.4])
    make_run(runs, "fedrsclip", 0, [0.3, 0.6], **{"loss.alpha": 0.1})
    make_run(runs, "fedrsclip", 0, [0.3, 0.5], **{"loss.alpha": 0.0})
    out = tmp_path / "results.md"

    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "## Setup 2" in out.read_text()  # without the flag: another setup

    assert main(["--runs", str(runs), "--out", str(out), "--variant-keys", "loss.alpha"]) == 0
    text = out.read_text()
    assert "## Setup 2" not in text and "Superseded" not in text
    assert "| `fedrsclip (loss.alpha=0.1)` | 60.00 (n=1) |" in text
    assert "| Fed-UCMerced 10c even | `fedrsclip` | `promptfl` | -10.00 |" in text
    assert "| Fed-UCMerced 10c even | `fedrsclip (loss.alpha=0.1)` | `promptfl` | +10.00 |" in text
    tie = "| Fed-UCMerced 10c even | `fedrsclip (loss.alpha=0.0)` | `promptfl` | 0.00 (tie) |"
    assert tie in text


def test_variant_keys_a_method_never_reads_do_not_split_its_rows(tmp_path: Path) -> None:
    """prompt.personal-head is fedrsclip's: promptfl runs that differ in it only (the default
    moved between them) are one row, while fedrsclip's runs are told apart by it."""
    runs = tmp_path / "runs"
    make_run(runs, "promptfl", 0, [0.3, 0.5], **{"prompt.personal-head": "private"})
    make_run(runs, "promptfl", 1, [0.3, 0.7])
    make_run(runs, "fedrsclip", 0, [0.3, 0.4], **{"prompt.personal-head": "private"})
    make_run(runs, "fedrsclip", 0, [0.3, 0.6])
    out = tmp_path / "results.md"
    keys = "prompt.personal-head"
    assert main(["--runs", str(runs), "--out", str(out), "--variant-keys", keys]) == 0
    text = out.read_text()
    assert "| `promptfl` | 60.00 ± 14.14 |" in text
    assert "promptfl (prompt.personal-head" not in text
    assert "| `fedrsclip (prompt.personal-head=private)` | 40.00 (n=1) |" in text


def test_unknown_variant_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        out = str(tmp_path / "r.md")
        main(["--runs", str(tmp_path), "--out", out, "--variant-keys", "loss.alfa"])
    assert exc.value.code == 2
    assert "loss.alfa not a run-config key" in capsys.readouterr().err


def test_validation_runs_are_labelled_as_such(tmp_path: Path) -> None:
    """Tuning grids score on validation: the page must not present those numbers as test."""
    runs = tmp_path / "runs"
    make_run(runs, "promptfl", 0, [0.3, 0.5], **{"data.holdout": "val"})
    out = tmp_path / "tuning.md"
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "**Scored on validation.**" in out.read_text()
    make_run(runs, "promptfl", 1, [0.3, 0.5])  # one test-scored run: no blanket note
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "**Scored on validation.**" not in out.read_text()


def test_paired_interval_and_verdicts():
    """The 95% t-interval of paired differences (known values), and when it covers 0."""
    from task.report.paired import paired_interval, t975

    mean, half = paired_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3: t(2) = 4.303
    assert mean == 2.0 and abs(half - 4.303 / 3**0.5) < 1e-9
    assert paired_interval([0.5])[1] is None
    assert t975(1) == 12.706 and t975(200) == 1.960
