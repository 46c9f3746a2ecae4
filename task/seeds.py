"""Seeds that depend only on their inputs, so a resumed run replays exactly what an uninterrupted
one would have done (node sampling, DP noise, each client's shuffling and initialisation)."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, server_round: int, partition_id: int, purpose: str = "train") -> int:
    """A 31-bit seed that depends only on its inputs (not on process, order or history)."""
    text = f"{seed}/{server_round}/{partition_id}/{purpose}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF
