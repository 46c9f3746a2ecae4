"""A client's private prompt on local disk: versioned by round, written atomically, checksummed.

The private prompt never leaves the client, and a ClientApp may be a fresh process every round
(deployment), so the prompt lives on disk. Files are versioned by the round that produced them so a
run resumed after an interruption replays round r+1 from the version of round r even when some
clients had already written round r+1: the private prompts and the server's global checkpoint
always line up. Each file carries a sha256 of its tensor bytes; a mismatch is an error, never a
silent fresh start.

Layout: ``<base>/<experiment>/client-<partition>/private-r<round:05d>.safetensors``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

_NAME = re.compile(r"^private-r(\d{5,})\.safetensors$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
KEEP_VERSIONS = 2  # the newest version and the one it was trained from


class PrivateStoreError(RuntimeError):
    """A private prompt file is unreadable or fails its checksum."""


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Checksum of dtype, shape and raw bytes (what must survive a save/load unchanged)."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class PrivateStore:
    """The versions of one client's private prompt within one experiment."""

    def __init__(self, base_dir: str | Path, experiment: str, partition_id: int) -> None:
        if not experiment:
            raise ValueError("a private store needs an experiment name (keys the directory)")
        safe = _SAFE.sub("_", experiment)
        self.dir = Path(base_dir).expanduser() / safe / f"client-{int(partition_id)}"
        self.partition_id = int(partition_id)

    def path(self, server_round: int) -> Path:
        return self.dir / f"private-r{server_round:05d}.safetensors"

    def rounds(self) -> list[int]:
        """Rounds with a saved version, ascending."""
        if not self.dir.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, max_round: int) -> tuple[torch.Tensor, int] | None:
        """The newest version saved at a round <= max_round, or None if there is none yet."""
        usable = [r for r in self.rounds() if r <= max_round]
        if not usable:
            return None
        r = usable[-1]
        path = self.path(r)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensor = f.get_tensor("private")
        except Exception as err:  # noqa: BLE001 (any read failure is a corrupt store)
            raise PrivateStoreError(f"cannot read private prompt {path}: {err}") from err
        if meta.get("sha256") != tensor_sha256(tensor):
            raise PrivateStoreError(
                f"private prompt {path} fails its checksum (disk corruption or a partial copy). "
                "Fix: restore the file, or delete the client's directory to start it afresh"
            )
        return tensor, r

    def save(self, tensor: torch.Tensor, server_round: int) -> Path:
        """Write the version of ``server_round`` atomically (tmp, fsync, rename), prune old ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        t = tensor.detach().cpu().contiguous()
        path = self.path(server_round)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        meta = {"sha256": tensor_sha256(t), "round": str(server_round)}
        try:
            save_file({"private": t}, str(tmp), metadata=meta)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.dir)
        finally:
            tmp.unlink(missing_ok=True)
        # Keep the version this round started from (a replayed round loads it again).
        older = [r for r in self.rounds() if r < server_round]
        for r in older[: -(KEEP_VERSIONS - 1)]:
            self.path(r).unlink(missing_ok=True)
        return path


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
