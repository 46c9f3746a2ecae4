"""Content hashes: of files (model weights, manifests) without reading them whole into memory,
and of tensors (the checksums stored beside cached features and private prompts).

A deployed ClientApp is a fresh process for every message, and hashing CLIP ViT-B/16's ~600 MB
of weights for the backbone identity costs ~1.5 s each time. ``file_sha256_memo`` remembers a
file's hash on local disk, keyed by its path, size, inode and modification time (the same signals
the feature cache keys images by), so an unchanged file is hashed once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MEMO_ENV = "FEDRSCLIP_HASH_MEMO"  # file to keep the memo in; "" disables it
CHUNK_BYTES = 16 << 20  # hash large buffers in pieces of this size


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, streamed (weights can be hundreds of MB)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Checksum of dtype, shape and raw bytes (what must survive a save/load unchanged).

    The feature cache and the private prompt store both write it into their files' metadata,
    so its output must stay byte-for-byte the same or files already written stop validating.
    """
    import torch  # here, not at module level: file hashing must not pay for importing torch

    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():  # hashed in place, chunk by chunk: no copy of a multi-GB tensor
        raw = memoryview(t.reshape(-1).view(torch.uint8).numpy())
        for start in range(0, len(raw), CHUNK_BYTES):
            h.update(raw[start : start + CHUNK_BYTES])
    return h.hexdigest()


# safetensors' dtype codes, as torch names them (what ``tensor_sha256`` puts in its prefix).
SAFETENSORS_DTYPES = {
    "F64": "torch.float64",
    "F32": "torch.float32",
    "F16": "torch.float16",
    "BF16": "torch.bfloat16",
    "I64": "torch.int64",
    "I32": "torch.int32",
    "I16": "torch.int16",
    "I8": "torch.int8",
    "U8": "torch.uint8",
    "BOOL": "torch.bool",
}


def safetensors_sha256(path: Path, names: Iterable[str]) -> dict[str, str]:
    """``tensor_sha256`` of the named tensors of a safetensors file, read from disk in chunks.

    Equal to hashing the loaded tensors, but the file is streamed through one small buffer:
    checking a 4 GB feature cache neither loads it nor leaves it resident (a memory-mapped
    tensor hashed in place would count all its pages). Raises ValueError on a file whose
    header does not describe its bytes (truncated, not safetensors, an unknown dtype).
    """
    import struct

    with Path(path).open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError("header length past the end of the file")
        header = json.loads(f.read(n))
        base = 8 + n
        out: dict[str, str] = {}
        for name in names:
            entry = header.get(name)
            if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
                raise ValueError(f"no tensor {name!r} of a known dtype in the header")
            begin, end = (int(x) for x in entry["data_offsets"])
            if not 0 <= begin <= end or base + end > size:
                raise ValueError(f"tensor {name!r} runs past the end of the file")
            shape = tuple(int(x) for x in entry["shape"])
            h = hashlib.sha256(f"{SAFETENSORS_DTYPES[entry['dtype']]}|{shape}|".encode())
            f.seek(base + begin)
            left = end - begin
            while left:
                chunk = f.read(min(CHUNK_BYTES, left))
                if not chunk:
                    raise ValueError(f"tensor {name!r} is truncated")
                h.update(chunk)
                left -= len(chunk)
            out[name] = h.hexdigest()
    return out


def _memo_path() -> Path | None:
    value = os.environ.get(MEMO_ENV)
    if value is not None:
        return Path(value) if value else None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fedrsclip" / "sha256-memo.json"


def file_sha256_memo(path: Path) -> str:
    """``file_sha256``, remembered across processes while the file is unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    memo_file = _memo_path()
    memo: dict[str, str] = {}
    if memo_file is not None:
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if isinstance(memo, dict) and isinstance(memo.get(key), str):
            return memo[key]
    digest = file_sha256(path)
    if memo_file is not None:
        memo = {k: v for k, v in memo.items() if not k.startswith(f"{path}|")}
        memo[key] = digest
        try:  # best effort: an unwritable cache only costs the hash next time
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_file.with_name(f".{memo_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(memo, indent=0, sort_keys=True))
            os.replace(tmp, memo_file)
        except OSError:
            pass
    return digest
