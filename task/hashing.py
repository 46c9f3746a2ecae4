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
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MEMO_ENV = "FEDRSCLIP_HASH_MEMO"  # file to keep the memo in; "" disables it


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
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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
