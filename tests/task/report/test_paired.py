"""task.report.paired: each ablation against the full method, pair by pair."""

from __future__ import annotations

from pathlib import Path

from task.report import main
from tests.task.report.test_report import make_run


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {title}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    body = [line for line in lines[start:end] if line.startswith("| ")]
    return body[2:]  # the rows, without the header and its rule


def test_each_ablation_is_paired_with_the_full_method_on_the_seeds_both_ran(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    full = {0: 0.60, 1: 0.62, 2: 0.61}
    for seed, acc in full.items():
        make_run(runs, "fedrsclip", seed, [0.3, acc])
        make_run(runs, "fedrsclip-nodpa", seed, [0.3, acc + 0.02 + 0.01 * seed])  # +2, +3, +4
        make_run(runs, "fedrsclip-noot", seed, [0.3, acc - 0.002 * (seed - 1)])  # +0.2, 0, -0.2
    make_run(runs, "fedrsclip-noprivate", 0, [0.3, 0.50])  # one seed: no interval
    make_run(runs, "fedrsclip-concat", 5, [0.3, 0.70])  # no seed in common: no row
    make_run(runs, "promptfl", 0, [0.3, 0.55])
    out = tmp_path / "r.md"
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    rows = _section(out.read_text(), "Each ablation minus the full method")
    by_name = {r.split("|")[2].strip(): [c.strip() for c in r.split("|")[1:-1]] for r in rows}
    assert set(by_name) == {"`fedrsclip-nodpa`", "`fedrsclip-noot`", "`fedrsclip-noprivate`"}
    nodpa = by_name["`fedrsclip-nodpa`"]
    assert nodpa[2:6] == ["`fedrsclip`", "3", "3 × 1", "+3.00"]
    # t(2) = 4.303, sd 1, n 3: half-width 2.48 -> [+0.52, +5.48], entirely above 0
    assert nodpa[6:] == ["[+0.52, +5.48]", "ablation above"]
    assert by_name["`fedrsclip-noot`"][5:] == ["+0.00", "[-0.50, +0.50]", "not distinguishable"]
    assert by_name["`fedrsclip-noprivate`"][3:] == ["1", "1 × 1", "-10.00", "—",
                                                   "one pair: no interval"]  # fmt: skip
    # The baseline table is unchanged: it pairs FedRSCLIP rows with baselines only.
    baseline_rows = _section(out.read_text(), "FedRSCLIP minus")
    assert len(baseline_rows) == 1 and "`promptfl`" in baseline_rows[0]
    assert not any("fedrsclip-" in r for r in baseline_rows)
