"""Content hashes: the weights-hash memo (same answer, reused while a file is unchanged) and
the tensor checksum stored in cache and private-prompt files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

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


@pytest.mark.parametrize(
    ("make", "digest"),
    [
        (
            lambda: torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "6fa8cc27caf0bad3be1d4a001ed46270dd716ac45cd3c727ad441966fc7cb742",
        ),
        (
            lambda: torch.zeros(0, 4),
            "3efd62b730222ec5c597ef576854abd86893cd45c57b7f28365ba54d589c1edd",
        ),
        (
            lambda: torch.arange(4, dtype=torch.bfloat16),
            "cfb0f81cc54592aeda2ffb34cfa292d38df6002a4322145a13b6239bf2366ee8",
        ),
    ],
)
def test_tensor_checksum_is_byte_exact(make, digest: str) -> None:
    """Feature-cache and private-prompt files already on disk carry these checksums."""
    assert hashing.tensor_sha256(make()) == digest


def test_tensor_sha256_ignores_strides_of_size_one_dims() -> None:
    """A conv kernel of shape (n, c, 1, 1) can carry any stride on its size-one dims and still be
    "contiguous"; its checksum is that of the same values laid out plainly."""
    import torch

    from task.hashing import tensor_sha256

    plain = torch.randn(8, 3, 1, 1)
    odd = plain.as_strided((8, 3, 1, 1), (3, 1, 64, 64))
    assert odd.is_contiguous() and odd.stride(-1) == 64
    assert tensor_sha256(odd) == tensor_sha256(plain.clone())
    assert tensor_sha256(odd) != tensor_sha256(plain + 1)


def _reference_sha256(t: torch.Tensor) -> str:
    """The checksum as first defined: prefix, then the tensor's bytes in one copy."""
    t = t.contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


TENSORS = {
    "f32": torch.randn(7, 5),
    "f16": torch.randn(3, 11).half(),
    "bf16": torch.randn(13).bfloat16(),
    "i64": torch.arange(9),
    "u8": torch.arange(200, dtype=torch.uint8).reshape(10, 20),
    "empty": torch.zeros(0, 4),
    "bool": torch.tensor([True, False, True]),
}


@pytest.mark.parametrize("chunk", [1, 7, 16 << 20])
def test_chunked_checksums_equal_the_one_copy_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """In memory (in place, chunk by chunk) and from a safetensors file on disk (streamed): the
    same digest as the one-copy definition, for every dtype and whatever the chunk size."""
    from safetensors.torch import save_file

    monkeypatch.setattr(hashing, "CHUNK_BYTES", chunk)
    path = tmp_path / "t.safetensors"
    save_file(TENSORS, str(path), metadata={"k": "v"})
    from_disk = hashing.safetensors_sha256(path, list(TENSORS))
    for name, t in TENSORS.items():
        assert hashing.tensor_sha256(t) == _reference_sha256(t), name
        assert from_disk[name] == _reference_sha256(t), name


def test_safetensors_sha256_rejects_files_that_do_not_hold_their_tensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"a": torch.randn(64, 64)}, str(path))
    with pytest.raises(ValueError, match="no tensor 'b'"):
        hashing.safetensors_sha256(path, ["b"])
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="past the end"):
        hashing.safetensors_sha256(cut, ["a"])
    cut.write_bytes(data[:5])
    with pytest.raises(ValueError, match="shorter"):
        hashing.safetensors_sha256(cut, ["a"])
    cut.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="header length"):
        hashing.safetensors_sha256(cut, ["a"])
