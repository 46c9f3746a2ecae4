"""The weights-hash memo: same answer as hashing, reused while the file is unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import task.hashing as hashing


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_memo_equals_hash_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memo = tmp_path / "memo.json"
    monkeypatch.setenv(hashing.MEMO_ENV, str(memo))
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    assert hashing.file_sha256_memo(f) == _sha(b"weights")
    assert memo.is_file()

    def boom(path: Path) -> str:
        raise AssertionError("hashed again")

    monkeypatch.setattr(hashing, "file_sha256", boom)
    assert hashing.file_sha256_memo(f) == _sha(b"weights")  # from the memo


def test_changed_file_is_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hashing.MEMO_ENV, str(tmp_path / "memo.json"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"aaaa")
    assert hashing.file_sha256_memo(f) == _sha(b"aaaa")
    f.write_bytes(b"bbbb")  # same size: mtime/ctime change
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert hashing.file_sha256_memo(f) == _sha(b"bbbb")


def test_disabled_or_unwritable_memo_still_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    monkeypatch.setenv(hashing.MEMO_ENV, "")
    assert hashing.file_sha256_memo(f) == _sha(b"x")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(hashing.MEMO_ENV, str(blocker / "memo.json"))
    assert hashing.file_sha256_memo(f) == _sha(b"x")


def test_corrupt_memo_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memo = tmp_path / "memo.json"
    memo.write_text("{not json")
    monkeypatch.setenv(hashing.MEMO_ENV, str(memo))
    f = tmp_path / "w.bin"
    f.write_bytes(b"y")
    assert hashing.file_sha256_memo(f) == _sha(b"y")
