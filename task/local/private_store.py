"""A client's private prompt on local disk: versioned by round, written atomically, checksummed.

The private prompt never leaves the client, and a ClientApp may be a fresh process every round
(deployment), so the prompt lives on disk. Files are versioned by the round that produced them so a
run resumed after an interruption replays round r+1 from the version of round r even when some
clients had already written round r+1: the private prompts and the server's global checkpoint
always line up. Each file carries a sha256 of its tensor bytes; a mismatch (or an unreadable,
truncated file) is an error naming the file, never a silent fresh start. With
``on_corrupt="quarantine"`` (run config ``client.on-corrupt``) the bad file is renamed aside to
``<name>.corrupt-<time>`` with a warning and the next older good version is used (none left: the
client re-initialises its private prompt). A failed write (full disk, crash) leaves the previous
files untouched: the new version only appears by an atomic rename after a complete, fsynced write.

Layout: ``<base>/<experiment>/client-<partition>/private-r<round:05d>.safetensors``, and with
``prompt.personal-head=auto`` ``mix-r<round:05d>.json`` (the θ the client chose for that round's
model, checksummed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from task.durable import fsync_dir
from task.hashing import tensor_sha256

log = logging.getLogger(__name__)

_NAME = re.compile(r"^private-r(\d{5,})\.safetensors$")
_MIX_NAME = re.compile(r"^mix-r(\d{5,})\.json$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
KEEP_VERSIONS = 2  # the newest version and the one it was trained from


class PrivateStoreError(RuntimeError):
    """A private prompt file is unreadable or fails its checksum."""


class PrivateStore:
    """The versions of one client's private prompt within one experiment."""

    # Called with the complete temporary file just before the rename: a test seam for a crash
    # mid-write (testkit.faults sets it; an instance may set its own).
    before_replace: Callable[[Path], None] | None = None

    def __init__(
        self,
        base_dir: str | Path,
        experiment: str,
        partition_id: int,
        on_corrupt: str = "error",
    ) -> None:
        if not experiment:
            raise ValueError("a private store needs an experiment name (keys the directory)")
        if on_corrupt not in ("error", "quarantine"):
            raise ValueError(f"on_corrupt must be 'error' or 'quarantine', got {on_corrupt!r}")
        # A server names the experiment: no path may climb out of base_dir (".." or "/").
        safe = _SAFE.sub("_", experiment).lstrip(".")
        if not safe:
            raise ValueError(f"experiment name {experiment!r} names no directory")
        self.dir = Path(base_dir).expanduser() / safe / f"client-{int(partition_id)}"
        self.partition_id = int(partition_id)
        self.on_corrupt = on_corrupt

    def path(self, server_round: int) -> Path:
        return self.dir / f"private-r{server_round:05d}.safetensors"

    def rounds(self) -> list[int]:
        """Rounds with a saved version, ascending."""
        if not self.dir.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, max_round: int) -> tuple[torch.Tensor, int] | None:
        """The newest version saved at a round <= max_round, or None if there is none yet.

        A store holding only versions newer than ``max_round`` cannot provide the version a
        replayed round needs: an error (``on_corrupt=error``), or a warning and a fresh start."""
        rounds = self.rounds()
        if rounds and min(rounds) > max_round >= 1:
            msg = (
                f"private store {self.dir} holds versions {rounds} but the round needs one at "
                f"round <= {max_round} (was it restored from a later backup?)"
            )
            if self.on_corrupt == "error":
                raise PrivateStoreError(
                    msg + "; set client.on-corrupt='quarantine' to start afresh"
                )
            log.warning("%s: starting from a fresh private prompt", msg)
        for r in reversed([r for r in rounds if r <= max_round]):
            try:
                return self._read(self.path(r)), r
            except PrivateStoreError as err:
                if self.on_corrupt != "quarantine":
                    raise
                aside = quarantine(self.path(r))
                older = "an older version" if any(x < r for x in self.rounds()) else "a fresh one"
                log.warning("%s; quarantined to %s, continuing from %s", err, aside.name, older)
        return None

    @staticmethod
    def _read(path: Path) -> torch.Tensor:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensor = f.get_tensor("private")
        except Exception as err:  # noqa: BLE001 (any read failure is a corrupt store)
            raise PrivateStoreError(
                f"cannot read private prompt {path} (truncated or not a safetensors file: {err}). "
                "Fix: restore the file, delete it to fall back to the previous version or a "
                "fresh prompt, or set client.on-corrupt='quarantine'"
            ) from err
        if meta.get("sha256") != tensor_sha256(tensor):
            raise PrivateStoreError(
                f"private prompt {path} fails its checksum (disk corruption or a partial copy). "
                "Fix: restore the file, delete it to fall back to the previous version or a "
                "fresh prompt, or set client.on-corrupt='quarantine'"
            )
        return tensor

    def save(self, tensor: torch.Tensor, server_round: int) -> Path:
        """Write the version of ``server_round`` atomically (tmp, fsync, rename), prune old ones."""
        if server_round < 1:
            raise ValueError(f"a private prompt belongs to a round >= 1, got {server_round}")
        t = tensor.detach().cpu().contiguous()
        if not bool(torch.isfinite(t).all()):
            raise PrivateStoreError(
                f"refusing to save a non-finite private prompt for round {server_round} in "
                f"{self.dir} (the last good version is kept)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(server_round)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        meta = {"sha256": tensor_sha256(t), "round": str(server_round)}
        for stale in self.dir.glob(".private-r*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        try:
            save_file({"private": t}, str(tmp), metadata=meta)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if self.before_replace is not None:
                self.before_replace(tmp)
            os.replace(tmp, path)
            fsync_dir(self.dir)
        finally:
            tmp.unlink(missing_ok=True)
        # Keep the version this round started from (a replayed round loads it again).
        older = [r for r in self.rounds() if r < server_round]
        for r in older[: -(KEEP_VERSIONS - 1)]:
            self.path(r).unlink(missing_ok=True)
        oldest_kept = min(self.rounds())
        for stale in self.dir.glob("mix-r*.json"):  # θ of models older than any kept version
            m = _MIX_NAME.match(stale.name)
            if m and int(m.group(1)) < oldest_kept:
                stale.unlink(missing_ok=True)
        return path

    # -- the personalised head's θ (prompt.personal-head=auto) --------------------------------
    def mix_path(self, server_round: int) -> Path:
        return self.dir / f"mix-r{server_round:05d}.json"

    def save_mix(self, server_round: int, theta: float, scores: list | None = None) -> Path:
        """The θ this client chose for round ``server_round``'s model (written atomically with
        a checksum; it never leaves the node, like the private prompt)."""
        if not (isinstance(theta, float) and 0.0 <= theta <= 1.0):
            raise ValueError(f"a mix θ must be a float in [0, 1], got {theta!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        body = {"round": server_round, "theta": theta, "scores": scores or []}
        text = json.dumps(body, sort_keys=True)
        record = {**body, "sha256": hashlib.sha256(text.encode()).hexdigest()}
        path = self.mix_path(server_round)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps(record, sort_keys=True))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self.dir)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def load_mix(self, server_round: int) -> float | None:
        """The θ saved for round ``server_round`` (None when there is none); a file that fails
        its checksum or holds no θ in [0, 1] raises PrivateStoreError."""
        path = self.mix_path(server_round)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            body = {k: record[k] for k in ("round", "theta", "scores")}
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            theta = record["theta"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PrivateStoreError(f"cannot read the personalised head's θ {path}: {err}") from err
        ok = isinstance(theta, float) and 0.0 <= theta <= 1.0 and body["round"] == server_round
        if record.get("sha256") != digest or not ok:
            raise PrivateStoreError(
                f"the personalised head's θ {path} fails its checksum or range; delete it to "
                "let the client choose θ again at its next evaluation"
            )
        return theta


def quarantine(path: Path) -> Path:
    """Rename a bad file aside (kept for inspection, never read again); returns the new path."""
    aside = path.with_name(
        f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    os.replace(path, aside)
    return aside
