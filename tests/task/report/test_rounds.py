"""task.report at a round budget (--at-round) and the rows whose curves still rise."""

from __future__ import annotations

from pathlib import Path

import pytest

from task.report import load_runs, main, run_stats
from task.report.rising import RISING_POINTS, last_gain, rising_rows
from task.report.runs import at_round
from task.runs.run_dir import RunDir
from tests.task.report.test_report import make_run

ACCS = [0.30, 0.50, 0.60, 0.66, 0.70]


def test_a_run_seen_at_an_earlier_round_is_the_run_that_stopped_there(tmp_path: Path) -> None:
    make_run(tmp_path / "long", "fedrsclip", 0, ACCS)
    make_run(tmp_path / "short", "fedrsclip", 0, ACCS[:3])
    (long,), (short,) = load_runs(tmp_path / "long"), load_runs(tmp_path / "short")
    cut = at_round(long, 3)
    assert cut is not None and cut.complete and cut.num_rounds == 3
    assert cut.summary == short.summary
    assert run_stats(cut) == run_stats(short)
    assert at_round(long, 5) is long  # its own budget: the run itself
    assert at_round(short, 5) is None  # never got there


def test_an_extension_in_progress_counts_at_the_rounds_it_finished(tmp_path: Path) -> None:
    make_run(tmp_path, "fedrsclip", 0, ACCS[:3])
    (run,) = load_runs(tmp_path)
    # resumed with server.num-rounds raised to 5 and stopped after round 4: incomplete
    extended = RunDir.open(tmp_path, run.name, {**run.config, "server.num-rounds": 5}, resume=True)
    extended.append_metrics({**run.metrics[-1], "round": 4, "personalised_accuracy": 0.9})
    (run,) = load_runs(tmp_path)
    assert not run.complete
    cut = at_round(run, 3)
    assert cut is not None and cut.complete
    assert run_stats(cut).personalised == pytest.approx(0.60)
    assert at_round(run, 5) is None


def test_report_at_round_keeps_one_budget_per_table(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, last in enumerate([0.70, 0.74]):
        make_run(runs, "fedrsclip", seed, [*ACCS[:4], last])  # extended to 5 rounds
        make_run(runs, "promptfl", seed, [0.40, 0.55, 0.58])  # stopped at 3
    make_run(runs, "zeroshot", 0, [0.30])  # trains nothing: one round is every round
    out = tmp_path / "results.md"

    assert main(["--runs", str(runs), "--out", str(out), "--at-round", "3"]) == 0
    text = out.read_text()
    assert "**Every run at round 3**" in text and "0 complete run(s)" in text
    assert "| `zeroshot` | 30.00 (n=1) |" in text
    assert "| `fedrsclip` | 60.00 ± 0.00 |" in text  # round 3 of both seeds, not 70/74
    assert "| `fedrsclip` | 0, 1 | 3 |" in text

    assert main(["--runs", str(runs), "--out", str(out), "--at-round", "5"]) == 0
    text = out.read_text()
    assert "2 complete run(s) that ended before round 5 are left out" in text
    assert "| `fedrsclip` | 72.00 ± 2.83 |" in text and "`promptfl`" not in text
    assert "| `zeroshot` | 30.00 (n=1) |" in text

    assert main(["--runs", str(runs), "--out", str(out)]) == 0  # no budget: both, mixed
    assert "| `fedrsclip` | 0, 1 | 5 |" in out.read_text()


def test_at_round_below_one_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--runs", str(tmp_path), "--out", str(tmp_path / "r.md"), "--at-round", "0"])
    assert e.value.code == 2 and "--at-round must be >= 1" in capsys.readouterr().err


def test_rising_rows_flag_gains_over_the_last_two_rounds(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    step = RISING_POINTS / 100
    make_run(runs, "fedrsclip", 0, [0.5, 0.7, 0.7 + 0.6 * step, 0.7 + 1.2 * step])  # +0.6 pts
    make_run(runs, "fedrsclip", 1, [0.5, 0.7, 0.7, 0.7 + 1.0 * step])  # +0.5: mean 0.55
    make_run(runs, "promptfl", 0, [0.5, 0.7, 0.71, 0.704])  # +0.4: flat enough
    make_run(runs, "local", 0, [0.5, 0.8, 0.9, 0.7])  # falling
    make_run(runs, "zeroshot", 0, [0.3])  # one round: no gain to speak of
    out = tmp_path / "results.md"
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    section = text.split("### Curves still rising at the last round")[1].split("\n### ")[0]
    assert "| `fedrsclip` | 0, 1 | +0.55 | +0.60, +0.50 |" in section
    for m in ("promptfl", "local", "zeroshot"):
        assert f"`{m}`" not in section
    assert last_gain([(1, 0.5, None, 0.0)]) is None
    assert last_gain([(1, 0.5, None, 0.0), (2, None, None, 0.0), (3, 0.6, None, 0.0)]) == (
        pytest.approx(10.0)
    )
    assert rising_rows({}) == []
