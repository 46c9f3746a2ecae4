from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from task.data.errors import DataError
from task.data.sources import load_listing, materialize_hub_dataset, scan_image_folder


def test_scan_sorted_relative_ids(make_tree) -> None:
    root = make_tree({"b_class": 2, "a_class": 3}, ext=".png")
    (root / "a_class" / "notes.txt").write_text("x")
    (root / ".hidden").mkdir()
    lst = scan_image_folder(root, "imagefolder")
    assert lst.folders == ["a_class", "b_class"]
    assert lst.class_names == ["a class", "b class"]
    ids = [r.image_id for r in lst.records]
    assert ids == sorted(ids) and ids[0] == "imagefolder/a_class/a_class000.png"
    assert all(os.path.isabs(r.path) for r in lst.records)
    assert [r.label for r in lst.records] == [0, 0, 0, 1, 1]


def test_scan_is_order_independent(make_tree, monkeypatch) -> None:
    root = make_tree({"x": 3, "y": 3})
    first = scan_image_folder(root, "imagefolder").records
    real = os.scandir

    class Reversed:  # simulate a filesystem returning entries in another order
        def __init__(self, entries):
            self._it = iter(entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return self

        def __next__(self):
            return next(self._it)

    def reversed_scandir(path):
        with real(path) as it:
            return Reversed(sorted(it, key=lambda e: e.name, reverse=True))

    monkeypatch.setattr(os, "scandir", reversed_scandir)
    assert scan_image_folder(root, "imagefolder").records == first


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*Fix"):
        scan_image_folder(tmp_path / "nope", "imagefolder")


def test_root_is_file(tmp_path: Path) -> None:
    f = tmp_path / "f.jpg"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="not a directory"):
        scan_image_folder(f, "imagefolder")


def test_no_class_dirs(tmp_path: Path) -> None:
    (tmp_path / "loose.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_image_folder(tmp_path, "imagefolder")


def test_dir_with_no_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="contains no images"):
        scan_image_folder(tmp_path, "imagefolder")


def test_empty_class_dir(make_tree) -> None:
    root = make_tree({"a": 2, "b": 2})
    (root / "empty_cls").mkdir()
    with pytest.raises(DataError, match=r"\['empty_cls'\].*Fix"):
        scan_image_folder(root, "imagefolder")


def test_unreadable_dir(make_tree, monkeypatch) -> None:
    root = make_tree({"a": 2})

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(DataError, match="permission denied.*Fix"):
        scan_image_folder(root, "imagefolder")


def test_duplicate_humanised_names(make_tree) -> None:
    root = make_tree({"parking_lot": 2, "ParkingLot": 2})
    with pytest.raises(DataError, match="duplicate class names"):
        scan_image_folder(root, "imagefolder")


def _fake_hub_dataset(tmp_path: Path) -> datasets.DatasetDict:
    rng = np.random.default_rng(0)
    imgs, labels = [], []
    for i in range(6):
        p = tmp_path / f"src{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
        imgs.append(str(p))
        labels.append(i % 2)
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["Bare Land", "beach"])}
    )
    ds = datasets.Dataset.from_dict({"image": imgs, "label": labels}, features=feats)
    # save/load round trip so images are stored as bytes, like a downloaded parquet dataset
    ds.save_to_disk(str(tmp_path / "saved"))
    loaded = datasets.load_from_disk(str(tmp_path / "saved"))
    return datasets.DatasetDict(
        {"train": loaded.select(range(4)), "test": loaded.select(range(4, 6))}
    )


def test_hub_materialise(tmp_path: Path, monkeypatch) -> None:
    dsd = _fake_hub_dataset(tmp_path)
    calls = []

    def fake_load(hub_id, *a, **k):
        calls.append(hub_id)
        return dsd

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    lst = load_listing("aid", "", "someone/AID", str(tmp_path / "cache"))
    assert calls == ["someone/AID"]
    assert lst.class_names == ["bare land", "beach"]
    assert len(lst.records) == 6
    assert lst.records[0].image_id.startswith("aid/Bare Land/")
    assert Path(lst.records[0].path).is_file()
    # second call reuses the cache without loading
    again = load_listing("aid", "", "someone/AID", str(tmp_path / "cache"))
    assert calls == ["someone/AID"] and again.records == lst.records


def test_hub_failure_is_clear(tmp_path: Path, monkeypatch) -> None:
    def offline(*a, **k):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="blanchon/UC_Merced.*Fix: set data.root"):
        load_listing("ucmerced", "", "", str(tmp_path))


def test_hub_without_label_column(tmp_path: Path, monkeypatch) -> None:
    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: ds)
    with pytest.raises(DataError, match="no image \\+ class-label"):
        materialize_hub_dataset("x/y", tmp_path)


def test_imagefolder_needs_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no hub id"):
        load_listing("imagefolder", "", "", str(tmp_path))
