"""Build a federation (clients with their own train/test records) from a DataConfig, and
write its manifest + heatmap so a user can see the split.

build_federation does every check (paths, empty folders, image headers, client sizes) before
returning, so problems surface before any training starts. With ``data.partitioner=local`` there
is no shared listing: build_local_federation builds one node's client from its own folder, and
the server only writes a config manifest (local_manifest_dict); it never lists any images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from task.config import DataConfig
from task.data.classnames import harmonize, match_folders
from task.data.errors import DataError
from task.data.partition import PARTITION_HINTS, partition_indices, stratified_split
from task.data.records import ImageRecord, class_histogram, validate_images
from task.data.sources import Listing, load_listing, scan_image_folder

log = logging.getLogger(__name__)

MANIFEST_NAME = "partition.json"
HEATMAP_NAME = "partition_heatmap.png"


@dataclass
class ClientData:
    """One client's own images: train for local training, test for the accuracy it reports.

    With ``data.holdout=val`` ``test`` holds the validation images (so every evaluation path
    scores them unchanged) and the real test split is only counted (``withheld``), never loaded.
    With ``holdout=test`` and ``val-fraction > 0``, ``val`` lists the held-out train images so a
    tuned run and its final run train on exactly the same images.
    """

    client_id: int
    train: list[ImageRecord]
    test: list[ImageRecord]
    source: str = ""  # dataset the client's images come from
    val: list[ImageRecord] = field(default_factory=list)  # held out of train, not evaluated
    withheld: int = 0  # test images set aside unseen (holdout=val)


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

    def client(self, partition_id: int) -> ClientData:
        """The client with this id (a local federation holds only its own node's client)."""
        for c in self.clients:
            if c.client_id == partition_id:
                return c
        raise ValueError(
            f"partition-id {partition_id} but the federation has clients "
            f"{[c.client_id for c in self.clients]}. Fix: set data.num-clients to the number of "
            "SuperNodes and give each a distinct partition-id below it"
        )

    def fingerprint(self) -> str:
        """sha256 of the assignment (ids, labels, sides): equal iff the partition is equal."""
        h = hashlib.sha256()
        h.update(json.dumps(self.class_names).encode())
        for c in self.clients:
            sides = [("train", c.train), ("test", c.test)]
            if c.val or c.withheld:  # absent without a val split: old fingerprints still hold
                sides += [("val", c.val), (f"withheld={c.withheld}", [])]
            for side, recs in sides:
                h.update(f"|{c.client_id}:{side}".encode())
                for r in recs:
                    h.update(f"{r.image_id}\t{r.label}\n".encode())
        return h.hexdigest()


def build_federation(cfg: DataConfig) -> Federation:
    """Load, check and split the configured data; deterministic for a given cfg and files."""
    cfg.validate()
    if cfg.partitioner == "local":
        raise DataError(
            "data.partitioner=local has no shared dataset to list: each node reads its own "
            "folder (build_local_federation). Fix: use another data.partitioner with data.root"
        )
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
    given = cfg.class_name_list()
    if cross:
        unified = sorted({harmonize(n, aliases) for lst, _ in groups for n in lst.class_names})
    else:
        unified = given or list(groups[0][0].class_names)
    index = {name: i for i, name in enumerate(unified)}
    label_map: dict[str, dict[str, str]] = {}
    clients: list[ClientData] = []
    for g, (listing, k) in enumerate(groups):
        if given and not cross:
            records, label_map[listing.dataset] = relabel(listing, cfg)
        else:
            names = [harmonize(n, aliases) if cross else n for n in listing.class_names]
            label_map[listing.dataset] = dict(zip(listing.folders, names, strict=True))
            remap = [index[n] for n in names]
            records = [dataclasses.replace(r, label=remap[r.label]) for r in listing.records]
        labels = [r.label for r in records]
        need = min_images(cfg)
        if len(records) < need * k:
            raise DataError(
                f"{listing.dataset}: {len(records)} images for {k} clients; each client needs "
                f">= {need} images ({_SIDES[need]}). Fix: lower data.num-clients (or the count "
                f"in data.cross){', set data.val-fraction=0' if need > 2 else ''} or add images"
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
            if len(idx) < need:
                raise DataError(
                    f"client {cid} ({listing.dataset}) gets {len(idx)} image(s) from the "
                    f"{cfg.partitioner!r} partitioner; each client needs >= {need} "
                    f"({_SIDES[need]}). Fix: {PARTITION_HINTS[cfg.partitioner]}"
                )
            clients.append(split_client(cid, idx, records, cfg, (seed, local_id), listing.dataset))
    name = "+".join(lst.dataset for lst, _ in groups)
    return Federation(name, unified, clients, label_map, dataclasses.asdict(cfg))


_SIDES = {2: "1 train + 1 test", 3: "1 train + 1 val + 1 test (data.val-fraction > 0)"}


def min_images(cfg: DataConfig) -> int:
    """Fewest images a client can be split into non-empty sides: train, test (and val)."""
    return 3 if cfg.val_fraction > 0 else 2


def split_client(
    cid: int,
    idx: list[int],
    records: list[ImageRecord],
    cfg: DataConfig,
    seed: tuple[int, ...],
    source: str,
) -> ClientData:
    """Stratified train/test split of one client's images, then train -> train' + val.

    The val split is drawn from train after the test split, so the test split (and, for
    holdout=test, the val split) are the same whatever data.holdout says.
    """
    labels = [r.label for r in records]
    train, test = stratified_split(idx, labels, cfg.test_fraction, seed)
    val: list[int] = []
    if cfg.val_fraction > 0:
        train, val = stratified_split(train, labels, cfg.val_fraction, (*seed, 1))

    def recs(ids: list[int]) -> list[ImageRecord]:
        return [records[i] for i in ids]

    if cfg.holdout == "val":
        return ClientData(cid, recs(train), recs(val), source, withheld=len(test))
    return ClientData(cid, recs(train), recs(test), source, val=recs(val))


def relabel(
    listing: Listing, cfg: DataConfig, local: bool = False
) -> tuple[list[ImageRecord], dict[str, str]]:
    """Records labelled by data.class-names (folder=words entries first, then by name), and
    folder -> class name. A shared federation (not ``local``) needs images for every class."""
    class_names = cfg.class_name_list()
    to_index = match_folders(
        listing.folders, class_names, listing.dataset, cfg.class_folder_map(), local=local
    )
    covered = set(to_index.values())
    missing = [n for i, n in enumerate(class_names) if i not in covered]
    if missing and not local:
        raise DataError(
            f"data.class-names lists {missing}, which no class folder under {listing.root} "
            f"matches (folders: {listing.folders}): every class needs images. Fix: map a folder "
            "to each with a folder=words entry, add those folders, or remove the entries"
        )
    remap = [to_index[f] for f in listing.folders]
    records = [dataclasses.replace(r, label=remap[r.label]) for r in listing.records]
    return records, {f: class_names[to_index[f]] for f in listing.folders}


def build_local_federation(cfg: DataConfig, root: str, partition_id: int) -> Federation:
    """One node's federation for data.partitioner=local: its own folder is its whole partition.

    Labels come from data.class-names (matched by name, so a node may lack classes: label
    skew), the split uses data.test-fraction / val-fraction / seed like any client's. No other
    node's data is listed; the result holds one client, `partition_id`.
    """
    cfg.validate()
    if not 0 <= partition_id < cfg.num_clients:
        raise DataError(
            f"partition-id {partition_id} is outside 0..{cfg.num_clients - 1}. Fix: set "
            "data.num-clients to the number of SuperNodes and give each a distinct partition-id"
        )
    listing = scan_image_folder(root, cfg.dataset, local=True)
    skipped = 0
    if cfg.verify != "none":
        listing.records, skipped = validate_images(
            listing.records, skip_corrupt=cfg.skip_corrupt, decode=cfg.verify == "decode"
        )
    class_names = cfg.class_name_list()
    records, folders = relabel(listing, cfg, local=True)
    need = min_images(cfg)
    if len(records) < need:
        raise DataError(
            f"the node's folder {listing.root} has {len(records)} usable image(s); it needs >= "
            f"{need} ({_SIDES[need]}). Fix: point node config data-root at a folder with more "
            "images, or set data.val-fraction=0"
        )
    client = split_client(
        partition_id, list(range(len(records))), records, cfg, (cfg.seed, partition_id), "local"
    )
    return Federation(
        f"local:{cfg.dataset}",
        class_names,
        [client],
        {listing.dataset: folders},
        dataclasses.asdict(cfg),
        skipped,
    )


def local_manifest_dict(cfg: DataConfig) -> dict[str, Any]:
    """What the server knows of a data.partitioner=local federation: the config, no data."""
    names = cfg.class_name_list()
    split = {k: getattr(cfg, k) for k in ("test_fraction", "val_fraction", "holdout", "seed")}
    digest = json.dumps({"class_names": names, "num_clients": cfg.num_clients, **split})
    return {
        "name": f"local:{cfg.dataset}",
        "partitioner": "local",
        "fingerprint": hashlib.sha256(digest.encode()).hexdigest(),  # of the config only
        "num_clients": cfg.num_clients,
        "class_names": names,
        "split": split,
        "data_visible_to_server": False,
        "note": "each node's partition is its own folder (node config data-root), split on the "
        "node; the server never listed or read any image, so there are no per-client ids",
        "label_map": {},
        "config": dataclasses.asdict(cfg),
        "skipped_corrupt": None,
        "clients": [],
    }


def write_run_manifest(cfg: DataConfig, fed: Federation | None, out_dir: Path) -> None:
    """partition.json (+ heatmap) for a run: the federation's, or local mode's config-only one."""
    if fed is not None:
        write_manifest(fed, out_dir)
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(local_manifest_dict(cfg), indent=1) + "\n"
    (out_dir / MANIFEST_NAME).write_text(text)


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
        if c.val:
            clients[-1].update(num_val=len(c.val), val_ids=[r.image_id for r in c.val])
        if c.withheld:
            clients[-1]["num_withheld_test"] = c.withheld
    return {
        "name": fed.name,
        "fingerprint": fed.fingerprint(),
        "num_clients": len(fed.clients),
        "class_names": fed.class_names,
        "label_map": fed.label_map,
        "config": fed.config,
        "evaluated_split": "val" if fed.config.get("holdout") == "val" else "test",
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
