"""Local state integrity: private prompts and feature-cache files carry checksums; a corrupt or
truncated file gives a clear error naming it, or (client.on-corrupt = "quarantine") is renamed
aside and re-initialised with a warning; a failed write (full disk) never replaces a good file."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file as real_save_file

import task.local.features as features_mod
import task.local.private_store as store_mod
import task.runs.run_dir as run_dir_mod
from task.local.features import CacheCorruptError, FeatureCache, FeatureSet
from task.local.private_store import PrivateStore, PrivateStoreError
from task.runs.run_dir import RunDir
from testkit.images import TINY_CLASSES, write_synthetic_images


def _flip_last_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _enospc_after_partial_write(*args, **kwargs):
    """save_file that writes half a file and then fails as a full disk does."""
    target = Path(args[1])
    real_save_file(*args, **kwargs)
    target.write_bytes(target.read_bytes()[:10])
    raise OSError(errno.ENOSPC, "No space left on device", str(target))


# -- private prompts --------------------------------------------------------------------------
@pytest.mark.parametrize("damage", [_flip_last_bytes, _truncate, lambda p: p.write_bytes(b"")])
def test_corrupt_private_prompt_is_a_clear_error_naming_it(tmp_path: Path, damage) -> None:
    store = PrivateStore(tmp_path, "e", 0)
    store.save(torch.arange(64, dtype=torch.float32), 1)
    path = store.save(torch.arange(64, dtype=torch.float32) + 1, 2)
    damage(path)
    with pytest.raises(PrivateStoreError, match=str(path)) as info:
        store.load(2)
    assert "client.on-corrupt" in str(info.value)
    assert path.exists()  # nothing renamed or deleted in error mode


def test_quarantine_falls_back_to_previous_version_then_fresh(tmp_path: Path, caplog) -> None:
    store = PrivateStore(tmp_path, "e", 0, on_corrupt="quarantine")
    store.save(torch.zeros(8), 1)
    p2 = store.save(torch.ones(8), 2)
    _truncate(p2)
    t, r = store.load(2)
    assert r == 1 and torch.equal(t, torch.zeros(8))
    assert (
        not p2.exists() and len(list(store.dir.glob("private-r00002.safetensors.corrupt-*"))) == 1
    )
    assert "quarantined" in caplog.text and str(p2) in caplog.text
    _flip_last_bytes(store.path(1))
    assert store.load(2) is None  # nothing good left: the client re-initialises its prompt
    assert "a fresh one" in caplog.text
    store.save(torch.full((8,), 3.0), 3)  # and carries on
    assert store.load(3)[1] == 3


def test_failed_private_write_never_replaces_the_good_file(tmp_path: Path, monkeypatch) -> None:
    store = PrivateStore(tmp_path, "e", 0)
    good = store.save(torch.full((4, 8), 7.0), 2)
    before = good.read_bytes()
    monkeypatch.setattr(store_mod, "save_file", _enospc_after_partial_write)
    with pytest.raises(OSError) as info:
        store.save(torch.full((4, 8), 9.0), 2)  # a replay of round 2 on a full disk
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        store.save(torch.full((4, 8), 9.0), 3)
    assert good.read_bytes() == before
    assert store.rounds() == [2] and not list(store.dir.glob(".*.tmp"))
    assert torch.equal(store.load(5)[0], torch.full((4, 8), 7.0))


def test_failed_fsync_or_rename_never_replaces_the_good_file(tmp_path: Path, monkeypatch) -> None:
    store = PrivateStore(tmp_path, "e", 0)
    good = store.save(torch.zeros(3), 1)
    before = good.read_bytes()

    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.os, "fsync", no_space)
    with pytest.raises(OSError):
        store.save(torch.ones(3), 1)
    assert good.read_bytes() == before and not list(store.dir.glob(".*.tmp"))


def test_stale_temporaries_of_a_killed_writer_are_cleaned(tmp_path: Path) -> None:
    store = PrivateStore(tmp_path, "e", 0)
    store.save(torch.zeros(3), 1)
    stale = store.dir / ".private-r00002.safetensors.999.dead.tmp"
    stale.write_bytes(b"half")
    assert store.load(5)[1] == 1  # a temporary is never mistaken for a version
    store.save(torch.ones(3), 2)
    assert not stale.exists()


# -- feature cache ----------------------------------------------------------------------------
@pytest.fixture
def cache_setup(tmp_path: Path, tiny_backbone):
    from task.data.records import ImageRecord

    root = write_synthetic_images(tmp_path / "img", TINY_CLASSES[:2], per_class=3)
    records = [
        ImageRecord(image_id=f"{p.parent.name}/{p.name}", path=str(p), label=i % 2)
        for i, p in enumerate(sorted(root.rglob("*.png")))
    ]
    return tmp_path, tiny_backbone, records


@pytest.mark.parametrize("damage", [_flip_last_bytes, _truncate])
def test_corrupt_feature_cache_errors_or_quarantines(cache_setup, damage, caplog) -> None:
    tmp, backbone, records = cache_setup
    cache = FeatureCache(tmp / "cache")
    first = cache.load_or_extract(backbone, records, with_patches=True, progress=False)
    (path,) = (tmp / "cache").glob("*.safetensors")
    damage(path)
    with pytest.raises(CacheCorruptError, match=str(path)):
        cache.load_or_extract(backbone, records, with_patches=True, progress=False)
    q = FeatureCache(tmp / "cache", on_corrupt="quarantine")
    again = q.load_or_extract(backbone, records, with_patches=True, progress=False)
    assert torch.allclose(again.global_, first.global_) and again.ids == first.ids
    assert len(list((tmp / "cache").glob("*.corrupt-*"))) == 1 and "quarantined" in caplog.text
    # The re-extracted file is good again.
    assert cache.load_or_extract(backbone, records, True, progress=False).ids == first.ids


def test_failed_cache_write_keeps_the_good_file(cache_setup, monkeypatch) -> None:
    tmp, backbone, records = cache_setup
    cache = FeatureCache(tmp / "cache")
    feats = cache.load_or_extract(backbone, records, with_patches=False, progress=False)
    (path,) = (tmp / "cache").glob("*.safetensors")
    before = path.read_bytes()
    monkeypatch.setattr(features_mod, "save_file", _enospc_after_partial_write)
    bigger = FeatureSet(feats.ids, feats.labels, feats.global_, feats.global_[:, None, :].clone())
    with pytest.raises(OSError):
        cache._save(path, bigger)
    assert path.read_bytes() == before and not list((tmp / "cache").glob(".*.tmp"))


def test_failed_checkpoint_write_keeps_the_good_one(tmp_path: Path, monkeypatch) -> None:
    run = RunDir.open(tmp_path, "r", {"a": 1}, resume=True)
    good = run.save_checkpoint(1, {"shared_ctx": torch.ones(2, 3)})
    before = good.read_bytes()
    monkeypatch.setattr(run_dir_mod, "save_file", _enospc_after_partial_write)
    with pytest.raises(OSError):
        run.save_checkpoint(1, {"shared_ctx": torch.zeros(2, 3)})
    assert good.read_bytes() == before
    assert not list(good.parent.glob(".*.tmp"))


# -- through the ClientApp --------------------------------------------------------------------
@pytest.mark.slow
def test_client_app_reports_corrupt_store_or_quarantines(
    tmp_path: Path, tiny_clip_dir: Path, caplog
) -> None:
    from tests.reliability.helpers import client_dir, rows, run, setup_run

    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 1, "server.eval-every": 5})
    run(cfg)
    path = client_dir(cfg, 1) / "private-r00001.safetensors"
    _flip_last_bytes(path)
    # Error mode: client 1's round fails with a message naming its file; the others go on.
    grid = run({**cfg, "server.num-rounds": 2})
    errors = [m.error.reason for m in grid.replies if m.has_error()]
    assert errors and all(str(path) in e for e in errors)
    assert rows(cfg)[-1]["clients_failed"] >= 1
    # Quarantine mode: the file is set aside and client 1 re-initialises, with a warning.
    run({**cfg, "server.num-rounds": 3, "client.on-corrupt": "quarantine"})
    assert rows(cfg)[-1]["clients_ok"] == 3 and rows(cfg)[-1]["clients_failed"] == 0
    assert list(path.parent.glob("private-r00001.safetensors.corrupt-*"))
    assert "quarantined" in caplog.text


def test_global_checkpoint_carries_a_checksum(tmp_path: Path) -> None:
    """Issue 25: a flipped byte in a checkpoint is caught when a run resumes from it."""
    from task.runs.run_dir import RunDir, RunDirError

    run = RunDir.open(tmp_path, "ck", {"a": 1}, resume=True)
    path = run.save_checkpoint(1, {"shared_ctx": torch.arange(12.0).view(3, 4)})
    assert torch.equal(run.load_checkpoint(1)["shared_ctx"], torch.arange(12.0).view(3, 4))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the tensor bytes (the last bytes of the file)
    path.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="fails its checksum"):
        run.load_checkpoint(1)
    with pytest.raises(RunDirError, match="non-finite"):
        run.save_checkpoint(2, {"shared_ctx": torch.tensor([float("nan")])})
    assert not run.checkpoint_path(2).exists()


def test_a_store_with_only_newer_versions_is_not_a_silent_fresh_start(tmp_path: Path, caplog):
    """Issue 25: restored from a later backup, a store cannot give a replayed round its version."""
    strict = PrivateStore(tmp_path, "exp", 0)
    strict.save(torch.ones(2, 3), 5)
    with pytest.raises(PrivateStoreError, match="needs one at round <= 3"):
        strict.load(3)
    lenient = PrivateStore(tmp_path, "exp", 0, on_corrupt="quarantine")
    assert lenient.load(3) is None and "fresh private prompt" in caplog.text
    with pytest.raises(PrivateStoreError, match="non-finite"):
        strict.save(torch.full((2, 3), float("inf")), 6)
    assert strict.rounds() == [5]
