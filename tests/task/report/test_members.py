"""task.report.members: a cross-dataset federation in the tables and paired differences by
member dataset, without the members the backbone was built with."""

from __future__ import annotations

from pathlib import Path

import pytest

from task.report import main
from tests.task.report.test_paired import _section
from tests.task.report.test_report import make_run

CROSS = {"data.cross": "ucmerced:2,aid:3", "data.num-clients": 5}
LABEL = "cross ucmerced:2+aid:3 even"


def _per_client(ucm: tuple[float, float], aid: float) -> dict:
    """Clients 0-1 UC Merced (10 and 30 test images), 2-4 AID (20 each)."""
    return {
        "0": {"num_test": 10, "personalised_accuracy": ucm[0], "global_accuracy": ucm[0] - 0.1},
        "1": {"num_test": 30, "personalised_accuracy": ucm[1], "global_accuracy": ucm[1] - 0.1},
        **{
            str(i): {"num_test": 20, "personalised_accuracy": aid, "global_accuracy": aid}
            for i in (2, 3, 4)
        },
    }


def _cross_runs(runs: Path) -> None:
    # UC Merced members: fedrsclip (0.5*10 + 0.9*30)/40 = 0.80 then 0.85; promptfl 0.70, 0.71.
    # The AID clients are far better for promptfl: pooled, promptfl would be ahead.
    make_run(runs, "fedrsclip", 0, [0.3, 0.5], per_client=_per_client((0.5, 0.9), 0.2), **CROSS)
    make_run(runs, "fedrsclip", 1, [0.3, 0.5], per_client=_per_client((0.7, 0.9), 0.2), **CROSS)
    make_run(runs, "promptfl", 0, [0.3, 0.5], per_client=_per_client((0.7, 0.7), 0.9), **CROSS)
    make_run(runs, "promptfl", 1, [0.3, 0.5], per_client=_per_client((0.74, 0.7), 0.9), **CROSS)
    make_run(runs, "promptfl", 0, [0.3, 0.6])  # a plain federation passes through


def _row(text: str, title: str, method: str) -> list[str]:
    section = text[text.index(f"### {title}") :]
    line = next(x for x in section.splitlines() if x.startswith(f"| `{method}`"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_seen_members_are_left_out_and_the_rest_judged_on_their_own_clients(
    tmp_path: Path,
) -> None:
    runs, out = tmp_path / "runs", tmp_path / "r.md"
    _cross_runs(runs)
    assert main(["--runs", str(runs), "--out", str(out), "--seen-datasets", "aid"]) == 0
    text = out.read_text()

    head = text[text.index("### Final personalised accuracy") :].splitlines()[2]
    assert head == f"| method | Fed-UCMerced 10c even | {LABEL} · ucmerced clients |"
    assert "aid clients |" not in text.split("### Final global accuracy")[0]
    assert f"*{LABEL} · aid clients*" in text  # said to be left out
    assert _row(text, "Final personalised accuracy", "fedrsclip") == [
        "`fedrsclip`", "", "82.50 ± 3.54"  # (80 + 85) / 2
    ]  # fmt: skip
    assert _row(text, "Final global accuracy", "promptfl")[2] == "60.50 ± 0.71"  # 60.0, 61.0

    # Paired on the UC Merced clients: +10.0 and +14.0 (not the pooled numbers, where the
    # AID clients put promptfl ahead); t(1) = 12.706, sd 2.83, n 2 -> half-width 25.41.
    rows = _section(text, "FedRSCLIP minus")
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[0] == f"{LABEL} · ucmerced clients"
    assert cells[1:6] == ["`fedrsclip`", "`promptfl`", "2", "2 × 1", "+12.00"]
    assert cells[6:] == ["[-13.41, +37.41]", "not distinguishable"]

    # The federation's own section keeps the pooled numbers and both members.
    section = text[text.index("#### By member dataset") :]
    assert "| method | ucmerced pers. | ucmerced global | aid pers. | aid global |" in section


def test_without_seen_datasets_every_member_is_a_column(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "r.md"
    _cross_runs(runs)
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    head = text[text.index("### Final personalised accuracy") :].splitlines()[2]
    assert f"{LABEL} · aid clients" in head and f"{LABEL} · ucmerced clients" in head
    assert "Left out of these tables" not in text
    assert _row(text, "Final personalised accuracy", "promptfl")[1:] == [
        "60.00 (n=1)",  # the plain federation
        "90.00 ± 0.00",  # aid, both seeds
        "70.50 ± 0.71",  # ucmerced: 70.0, 71.0
    ]


def test_an_unknown_seen_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--runs", str(tmp_path), "--out", str(tmp_path / "r.md"), "--seen-datasets", "ad"])
    assert e.value.code == 2
    assert not (tmp_path / "r.md").exists()
