"""Private prompt store: versions by round, atomic checksummed writes, isolation by key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from task.local.private_store import PrivateStore, PrivateStoreError


def test_roundtrip_versions_and_pruning(tmp_path: Path) -> None:
    store = PrivateStore(tmp_path, "exp-1", 3)
    assert store.load(10) is None
    for r in (1, 2, 3):
        store.save(torch.full((2, 4), float(r)), r)
    assert store.rounds() == [2, 3]  # the newest and the version it was trained from
    t, r = store.load(2)
    assert r == 2 and torch.equal(t, torch.full((2, 4), 2.0))
    assert store.load(99)[1] == 3
    assert not list(store.dir.glob(".*.tmp"))


def test_replayed_round_keeps_its_starting_version(tmp_path: Path) -> None:
    store = PrivateStore(tmp_path, "e", 0)
    store.save(torch.zeros(2), 1)
    store.save(torch.ones(2), 5)  # a client that sat out rounds 2..4
    assert store.rounds() == [1, 5]
    assert store.load(4)[1] == 1  # a replay of round 5 starts from round 1's version


def test_checksum_detects_corruption(tmp_path: Path) -> None:
    store = PrivateStore(tmp_path, "e", 0)
    path = store.save(torch.arange(64, dtype=torch.float32), 1)
    data = bytearray(path.read_bytes())
    data[-4:] = b"\xff\xff\xff\x7f"
    path.write_bytes(bytes(data))
    with pytest.raises(PrivateStoreError, match="checksum"):
        store.load(1)
    path.write_bytes(b"garbage")
    with pytest.raises(PrivateStoreError):
        store.load(1)


def test_experiments_and_partitions_never_share_files(tmp_path: Path) -> None:
    dirs = {PrivateStore(tmp_path, e, p).dir for e in ("a", "b", "a/../b") for p in (0, 1)}
    assert len(dirs) == 6
    assert all(tmp_path in d.parents for d in dirs)
    with pytest.raises(ValueError):
        PrivateStore(tmp_path, "", 0)
