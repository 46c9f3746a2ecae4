"""task.report.archive: the run records kept with the report, so a grid survives the machine."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from task.report import load_runs, main
from task.report.archive import ArchiveError, merged, read_archive, update_archive
from tests.task.report.test_report import make_run


def _grid(runs: Path) -> None:
    for seed, (ours, base) in enumerate([(0.60, 0.70), (0.64, 0.72)]):
        make_run(runs, "fedrsclip", seed, [0.3, 0.5, ours], secs=30.0)
        make_run(runs, "promptfl", seed, [0.4, 0.6, base])
    make_run(runs, "zeroshot", 0, [0.2], payload=0)


def test_a_report_from_the_archive_alone_is_the_report_from_the_directories(
    tmp_path: Path,
) -> None:
    runs, archive = tmp_path / "runs", tmp_path / "kept" / "runs.jsonl"
    _grid(runs)
    first, second = tmp_path / "a" / "results.md", tmp_path / "b" / "results.md"
    assert main(["--runs", str(runs), "--out", str(first), "--archive", str(archive)]) == 0
    assert sorted(r.name for r in read_archive(archive)) == sorted(r.name for r in load_runs(runs))
    shutil.rmtree(runs)  # the machine that ran the grid is gone
    assert main(["--runs", str(runs), "--out", str(second), "--archive", str(archive)]) == 0
    assert second.read_text() == first.read_text()
    pngs = sorted(p.name for p in (tmp_path / "b" / "results").glob("*.png"))
    assert pngs == sorted(p.name for p in (tmp_path / "a" / "results").glob("*.png"))


def test_records_round_trip_exactly(tmp_path: Path) -> None:
    runs, archive = tmp_path / "runs", tmp_path / "runs.jsonl"
    make_run(runs, "promptfl", 0, [0.4, float("nan")])  # RunDir records NaN as null
    (live,) = load_runs(runs)
    kept, changed = update_archive(archive, [live])
    assert changed == 1
    (back,) = read_archive(archive)
    assert (back.name, back.config, back.summary) == (live.name, live.config, live.summary)
    assert back.metrics == live.metrics and back.metrics[1]["personalised_accuracy"] is None
    assert back.finished == os.stat(runs / live.name / "summary.json").st_mtime
    text = archive.read_text()
    assert update_archive(archive, [live])[1] == 0 and archive.read_text() == text  # unchanged


def test_merging_never_loses_a_run_and_the_later_rerun_wins(tmp_path: Path) -> None:
    archive = tmp_path / "runs.jsonl"
    a, b = tmp_path / "a", tmp_path / "b"
    make_run(a, "promptfl", 0, [0.4, 0.5])
    make_run(a, "fedrsclip", 0, [0.4, 0.6])
    update_archive(archive, load_runs(a))
    # another machine: only promptfl, rerun later with another result, and an unfinished one
    make_run(b, "promptfl", 0, [0.4, 0.7])
    make_run(b, "fedprox", 0, [0.3], rounds=5, finish=False)
    (newer,) = [r for r in load_runs(b) if r.method == "promptfl"]
    os.utime(b / newer.name / "summary.json", (2e9, 2e9))
    kept, changed = update_archive(archive, load_runs(b))
    assert changed == 1
    by_method = {r.method: r for r in read_archive(archive)}
    assert sorted(by_method) == ["fedrsclip", "promptfl"]  # fedprox unfinished: not kept
    assert by_method["promptfl"].summary == newer.summary
    # an older copy of a kept run never replaces it
    os.utime(b / newer.name / "summary.json", (1e9, 1e9))
    older = [r for r in load_runs(b) if r.method == "promptfl"]
    assert update_archive(archive, older)[1] == 0
    assert {r.method for r in merged(read_archive(archive), load_runs(b))} == {
        "fedrsclip",
        "promptfl",
        "fedprox",  # the report still lists the live unfinished run
    }


@pytest.mark.parametrize(
    "line, says",
    [
        ("{not json", "not JSON"),
        ('{"name": "x"}', "not a run record"),
        (
            json.dumps(
                {"name": "../up", "config": {}, "metrics": [], "summary": {}, "finished": 1}
            ),
            "not a directory name",
        ),
        (
            json.dumps({"name": "x", "config": [], "metrics": [], "summary": {}, "finished": 1}),
            "must be objects",
        ),
        (
            json.dumps({"name": "x", "config": {}, "metrics": [3], "summary": {}, "finished": 1}),
            "metrics row",
        ),
        (
            json.dumps(
                {"name": "x", "config": {}, "metrics": [], "summary": {}, "finished": "soon"}
            ),
            "finished must be a number",
        ),
    ],
)
def test_a_bad_line_is_named_and_the_report_exits_non_zero(
    tmp_path: Path, line: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "runs.jsonl"
    archive.write_text("\n" + line + "\n")
    with pytest.raises(ArchiveError, match=f"runs.jsonl:2: .*{says}"):
        read_archive(archive)
    out = tmp_path / "results.md"
    with pytest.raises(SystemExit) as stop:
        main(["--runs", str(tmp_path / "none"), "--out", str(out), "--archive", str(archive)])
    assert stop.value.code == 1 and says in capsys.readouterr().err
    assert not out.exists()
