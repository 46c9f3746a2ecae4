"""A 40-client partition of a 31,500-image listing (NWPU-RESISC45 size) is built in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from task.data import DataConfig, federate
from task.data.records import ImageRecord
from task.data.sources import Listing


def fake_listing(n_classes: int = 45, per_class: int = 700) -> Listing:
    folders = [f"class_{c:02d}" for c in range(n_classes)]
    recs = [
        ImageRecord(f"nwpu-resisc45/{f}/{f}_{i:03d}.jpg", f"/nonexistent/{f}/{i}.jpg", c)
        for c, f in enumerate(folders)
        for i in range(per_class)
    ]
    return Listing("nwpu-resisc45", Path("/nonexistent"), folders, folders, recs)


@pytest.mark.slow
@pytest.mark.parametrize("partitioner", ["even", "dirichlet", "pathological", "quantity-skew"])
def test_31500_images_40_clients(partitioner: str) -> None:
    listing = fake_listing()
    cfg = DataConfig(
        dataset="nwpu-resisc45",
        root="/nonexistent",
        num_clients=40,
        partitioner=partitioner,
        classes_per_client=5,
        verify="none",
    )
    # The root does not exist: the federation of 31,500 images is built from the listing alone,
    # without opening a file (how long that takes belongs in bench/, not in a test).
    fed = federate([(listing, 40)], cfg)
    assert len(fed.clients) == 40
    assert sum(len(c.train) + len(c.test) for c in fed.clients) == 31500
