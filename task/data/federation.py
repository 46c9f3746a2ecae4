"""Build a federation (clients with their own train/test records) from a DataConfig, and
write its manifest + heatmap so a user can see the split.

build_federation does every check (paths, empty folders, image headers, client sizes) before
returning, so problems surface before any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from task.data.classnames import harmonize
from task.data.config import DataConfig
from task.data.errors import DataError
from task.data.partition import partition_indices, stratified_split
from task.data.records import ImageRecord, class_histogram, validate_images
from task.data.sources import Listing, load_listing

log = logging.getLogger(__name__)

MANIFEST_NAME = "partition.json"
HEATMAP_NAME = "partition_heatmap.png"


@dataclass
class ClientData:
    """One client's own images: train for local training, test for personalised accuracy."""

    client_id: int
    train: list[ImageRecord]
    test: list[ImageRecord]
    source: str = ""  # dataset the client's images come from


@dataclass
class Federation:
    """All clients over one label space; class_names[i] are the prompt words for label i."""

    name: str
    class_names: list[str]
    clients: list[ClientData]
    label_map: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset->folder->name
    config: dict[str, Any] = field(default_factory=dict)
    skipped_corrupt: int = 0

    def global_test(self) -> list[ImageRecord]:
        """Union of the clients' test splits (disjoint), in client order."""
        return [rec for c in self.clients for rec in c.test]

    def fingerprint(self) -> str:
        """sha256 of the assignment (ids, labels, sides): equal iff the partition is equal."""
        h = hashlib.sha256()
        h.update(json.dumps(self.class_names).encode())
        for c in self.clients:
            for side, recs in (("train", c.train), ("test", c.test)):
                h.update(f"|{c.client_id}:{side}".encode())
                for r in recs:
                    h.update(f"{r.image_id}\t{r.label}\n".encode())
        return h.hexdigest()


def build_federation(cfg: DataConfig) -> Federation:
    """Load, check and split the configured data; deterministic for a given cfg and files."""
    cfg.validate()
    if cfg.cross:
        roots = cfg.cross_root_map()
        groups = [
            (load_listing(name, roots.get(name, ""), "", cfg.cache_dir), k)
            for name, k in cfg.cross_groups()
        ]
    else:
        listing = load_listing(cfg.dataset, cfg.root, cfg.hub_id, cfg.cache_dir)
        groups = [(listing, cfg.num_clients)]
    skipped = 0
    if cfg.verify != "none":
        for listing, _ in groups:
            kept, n_bad = validate_images(
                listing.records, skip_corrupt=cfg.skip_corrupt, decode=cfg.verify == "decode"
            )
            listing.records = kept
            skipped += n_bad
    fed = federate(groups, cfg)
    fed.skipped_corrupt = skipped
    return fed


def federate(groups: list[tuple[Listing, int]], cfg: DataConfig) -> Federation:
    """Partition already-listed datasets: (listing, number of clients) per group.

    One group is a plain federation; several form a cross-dataset federation whose label
    space is the sorted set of harmonised class names.
    """
    cross = len(groups) > 1 or bool(cfg.cross)
    aliases = cfg.cross_alias_map()
    if cross:
        unified = sorted({harmonize(n, aliases) for lst, _ in groups for n in lst.class_names})
    else:
        unified = list(groups[0][0].class_names)
    index = {name: i for i, name in enumerate(unified)}
    label_map: dict[str, dict[str, str]] = {}
    clients: list[ClientData] = []
    for g, (listing, k) in enumerate(groups):
        names = [harmonize(n, aliases) if cross else n for n in listing.class_names]
        label_map[listing.dataset] = dict(zip(listing.folders, names, strict=True))
        remap = [index[n] for n in names]
        records = [dataclasses.replace(r, label=remap[r.label]) for r in listing.records]
        labels = [r.label for r in records]
        if len(records) < 2 * k:
            raise DataError(
                f"{listing.dataset}: {len(records)} images for {k} clients; each client needs "
                f">= 1 train and >= 1 test image. Fix: lower data.num-clients (or the count in "
                "data.cross) or add images"
            )
        seed = cfg.seed + g
        parts = partition_indices(
            labels,
            k,
            cfg.partitioner,
            seed=seed,
            alpha=cfg.alpha,
            classes_per_client=cfg.classes_per_client,
            class_assignment=cfg.class_assignment,
            min_client_size=cfg.min_client_size,
        )
        for local_id, idx in enumerate(parts):
            cid = len(clients)
            if len(idx) < 2:
                raise DataError(
                    f"client {cid} ({listing.dataset}) gets {len(idx)} image(s) from the "
                    f"{cfg.partitioner!r} partitioner; each client needs >= 1 train and >= 1 "
                    "test image. Fix: lower data.num-clients, raise data.alpha, or use "
                    "data.partitioner=even"
                )
            train, test = stratified_split(idx, labels, cfg.test_fraction, (seed, local_id))
            clients.append(
                ClientData(
                    cid, [records[i] for i in train], [records[i] for i in test], listing.dataset
                )
            )
    name = "+".join(lst.dataset for lst, _ in groups)
    return Federation(name, unified, clients, label_map, dataclasses.asdict(cfg))


def manifest_dict(fed: Federation) -> dict[str, Any]:
    """The manifest content: per client image ids and class histograms, plus the label map."""
    k = len(fed.class_names)
    clients = []
    for c in fed.clients:
        clients.append(
            {
                "client_id": c.client_id,
                "source": c.source,
                "num_train": len(c.train),
                "num_test": len(c.test),
                "train_histogram": class_histogram(c.train, k),
                "test_histogram": class_histogram(c.test, k),
                "train_ids": [r.image_id for r in c.train],
                "test_ids": [r.image_id for r in c.test],
            }
        )
    return {
        "name": fed.name,
        "fingerprint": fed.fingerprint(),
        "num_clients": len(fed.clients),
        "class_names": fed.class_names,
        "label_map": fed.label_map,
        "config": fed.config,
        "skipped_corrupt": fed.skipped_corrupt,
        "clients": clients,
    }


def write_manifest(fed: Federation, out_dir: Path) -> None:
    """Write partition.json and partition_heatmap.png (clients x classes counts) to out_dir."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest_dict(fed)
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")

    counts = np.array(
        [
            [a + b for a, b in zip(c["train_histogram"], c["test_histogram"], strict=True)]
            for c in manifest["clients"]
        ]
    )
    n_clients, n_classes = counts.shape
    fig = Figure(figsize=(max(6.0, 0.28 * n_classes + 2), max(3.0, 0.22 * n_clients + 2)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(n_classes), fed.class_names, rotation=90, fontsize=6)
    step = max(1, n_clients // 40)
    ax.set_yticks(
        range(0, n_clients, step),
        [f"{i} {fed.clients[i].source}" for i in range(0, n_clients, step)],
        fontsize=6,
    )
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(f"{fed.name}: images per client and class (train+test)", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out_dir / HEATMAP_NAME, dpi=120)
