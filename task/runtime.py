"""Per-process caches: a simulation actor (or a long-lived process) serves many clients and
rounds, so the frozen backbone and each federation listing are built once per process."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from task.backbone import Backbone, load_backbone
from task.config import ModelConfig
from task.config.data import DataConfig
from task.data.federation import Federation, build_federation, build_local_federation

_BACKBONES: dict[tuple[str, str, str], Backbone] = {}
_FEDERATIONS: dict[str, Federation] = {}


def get_backbone(cfg: ModelConfig) -> Backbone:
    key = (cfg.name, cfg.device, cfg.dtype)
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(cfg)
    return _BACKBONES[key]


def get_federation(cfg: DataConfig) -> Federation:
    """The listed federation (every partitioner but ``local``; see task.data_source)."""
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    if key not in _FEDERATIONS:
        _FEDERATIONS[key] = build_federation(cfg)
    return _FEDERATIONS[key]


def get_local_federation(cfg: DataConfig, root: str, partition_id: int) -> Federation:
    """One node's own client (data.partitioner=local), cached like get_federation."""
    key = json.dumps([dataclasses.asdict(cfg), root, partition_id], sort_keys=True)
    if key not in _FEDERATIONS:
        _FEDERATIONS[key] = build_local_federation(cfg, root, partition_id)
    return _FEDERATIONS[key]


def derive_seed(seed: int, server_round: int, partition_id: int, purpose: str = "train") -> int:
    """A 31-bit seed that depends only on its inputs (not on process, order or history), so a
    resumed run replays exactly what an uninterrupted one would have done."""
    text = f"{seed}/{server_round}/{partition_id}/{purpose}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF
