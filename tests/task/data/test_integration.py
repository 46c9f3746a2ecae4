"""Checks against the real UC Merced and AID folders in ../shared/data (skipped without them)."""

from __future__ import annotations

import pytest

from task.data import DataConfig, build_federation
from task.data.sources import scan_image_folder
from tests.task.data.conftest import SHARED

DATA = SHARED / "data"
pytestmark = pytest.mark.integration


def need(name: str):
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} not present (../shared data is only on the project machines)")
    return root


def test_ucmerced_counts() -> None:
    lst = scan_image_folder(need("ucmerced"), "ucmerced")
    assert len(lst.folders) == 21 and len(lst.records) == 2100
    counts = [sum(r.label == i for r in lst.records) for i in range(21)]
    assert counts == [100] * 21
    assert lst.class_names[lst.folders.index("mobilehomepark")] == "mobile home park"


def test_aid_counts() -> None:
    lst = scan_image_folder(need("aid"), "aid")
    assert len(lst.folders) == 30 and len(lst.records) == 10000
    counts = [sum(r.label == i for r in lst.records) for i in range(30)]
    assert min(counts) >= 220 and max(counts) <= 420


@pytest.mark.parametrize("n", [10, 20, 40])
def test_real_ucmerced_federations(n: int) -> None:
    fed = build_federation(DataConfig(root=str(need("ucmerced")), num_clients=n))
    assert len(fed.clients) == n
    assert sum(len(c.train) + len(c.test) for c in fed.clients) == 2100


def test_real_cross_federation() -> None:
    ucm, aid = need("ucmerced"), need("aid")
    fed = build_federation(
        DataConfig(cross="ucmerced:5,aid:5", cross_roots=f"ucmerced={ucm},aid={aid}", verify="none")
    )
    assert fed.label_map["ucmerced"]["parkinglot"] == fed.label_map["aid"]["Parking"]
    assert fed.label_map["ucmerced"]["beach"] == fed.label_map["aid"]["Beach"] == "beach"
    assert len(fed.class_names) == 42
