"""Frozen image features, extracted once and cached on local disk.

The backbone never changes, so an image's features are a pure function of (model weights,
dtype, preprocessing, image file). They are computed once per split and reused by every round and
every process (a deployed ClientApp is a fresh process each round). The cache key covers all of
those inputs, so a different model or preprocessing can never hit a stale file.

Each file carries a sha256 per tensor (and of the id list); an unreadable, truncated or
mismatching file is an error naming it (CacheCorruptError), or with ``on_corrupt="quarantine"``
(run config ``client.on-corrupt``) it is renamed aside with a warning and the features are
extracted again. Writes go to a temporary file that is fsynced and then renamed, so a full disk or
a crash mid-write never replaces a good file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from task.data.partition import stratified_split
from task.data.records import CorruptImageError, ImageRecord, load_rgb
from task.durable import atomic_write_text
from task.hashing import safetensors_sha256, tensor_sha256
from task.model.backbone import Backbone

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: per-tensor sha256 in the metadata (format-1 files are never hit)


class CacheCorruptError(RuntimeError):
    """A feature-cache file is unreadable or fails its checksum."""


@dataclass
class FeatureSet:
    """Features of an ordered list of images; row i belongs to ids[i]."""

    ids: list[str]
    labels: torch.Tensor  # [N] int64
    global_: torch.Tensor  # [N, D] float32, L2-normalised
    patches: torch.Tensor | None  # [N, P, D] float16, L2-normalised, or None
    skipped: int = 0  # corrupt images left out (skip-corrupt)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int]) -> FeatureSet:
        """These rows, in this order (views of the cached tensors where possible)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return FeatureSet(
            ids=[self.ids[i] for i in rows],
            labels=self.labels[idx],
            global_=self.global_[idx],
            patches=None if self.patches is None else self.patches[idx],
        )


def selection_split(
    features: FeatureSet, fraction: float, seed: Sequence[int]
) -> tuple[FeatureSet, FeatureSet]:
    """(train, selection): a stratified ``fraction`` of a client's training images held out of
    local training, on which the client chooses its personalised head (prompt.personal-head=
    auto). Fixed by ``seed`` (the partition's), so no round ever trains on it. A client with
    fewer than 2 images keeps them all for training (an empty selection set)."""
    n = len(features)
    if n < 2:
        return features, features.subset([])
    labels = features.labels.tolist()
    train, held = stratified_split(list(range(n)), labels, fraction, tuple(seed))
    return features.subset(train), features.subset(held)


def extract_features(
    backbone: Backbone,
    records: Sequence[ImageRecord],
    with_patches: bool,
    batch_size: int = 64,
    skip_corrupt: bool = False,
    progress: bool = True,
    desc: str = "image features",
) -> FeatureSet:
    """Run the frozen image encoder over records (decoding one batch at a time)."""
    kept: list[ImageRecord] = []
    globals_, patches = [], []
    skipped = 0
    batches = range(0, len(records), batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        images, batch_records = [], []
        for rec in records[start : start + batch_size]:
            try:
                images.append(load_rgb(rec.path))
            except CorruptImageError as err:
                if not skip_corrupt:
                    raise
                skipped += 1
                log.warning("skipping corrupt image (data.skip-corrupt): %s", err)
                continue
            batch_records.append(rec)
        if not images:
            continue
        feats = backbone.encode_images(backbone.preprocess(images), with_patches)
        kept.extend(batch_records)
        globals_.append(feats.global_.cpu())
        if with_patches:
            patches.append(feats.patches.to(torch.float16).cpu())
    if skipped:
        log.warning("%d corrupt image(s) skipped out of %d", skipped, len(records))
    if not kept:
        raise ValueError(f"no readable images among {len(records)} records ({desc})")
    return FeatureSet(
        ids=[r.image_id for r in kept],
        labels=torch.tensor([r.label for r in kept], dtype=torch.long),
        global_=torch.cat(globals_),
        patches=torch.cat(patches) if with_patches else None,
        skipped=skipped,
    )


VERIFIED_SUFFIX = ".verified"  # beside a cache file: fingerprints of the verifications done


class FeatureCache:
    """A directory of safetensors files, one per (backbone, preprocessing, image list)."""

    def __init__(self, root: str | Path, on_corrupt: str = "error") -> None:
        if on_corrupt not in ("error", "quarantine"):
            raise ValueError(f"on_corrupt must be 'error' or 'quarantine', got {on_corrupt!r}")
        self.root = Path(root)
        self.on_corrupt = on_corrupt

    def key(self, backbone: Backbone, records: Sequence[ImageRecord]) -> str:
        h = hashlib.sha256()
        header = {
            "format": CACHE_FORMAT,
            "model": backbone.identity,
            "dtype": str(backbone.dtype),
            "preprocessing": backbone.preprocessing_id,
        }
        h.update(json.dumps(header, sort_keys=True).encode())
        for rec in records:
            stat = os.stat(rec.path)
            h.update(f"{rec.image_id}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load_or_extract(
        self,
        backbone: Backbone,
        records: Sequence[ImageRecord],
        with_patches: bool,
        skip_corrupt: bool = False,
        batch_size: int = 64,
        progress: bool = True,
        desc: str = "image features",
    ) -> FeatureSet:
        """Cached features when a matching file exists (with patches if needed), else extract."""
        key = self.key(backbone, records)
        path = self.path(key)
        try:
            cached = self._load(path, records, with_patches)
        except CacheCorruptError as err:
            if self.on_corrupt != "quarantine":
                raise
            from task.local.private_store import quarantine

            aside = quarantine(path)
            log.warning("%s; quarantined to %s, extracting the features again", err, aside.name)
            cached = None
        if cached is not None:
            return cached
        feats = extract_features(
            backbone, records, with_patches, batch_size, skip_corrupt, progress, desc
        )
        self._save(path, feats)
        return feats

    def _load(
        self, path: Path, records: Sequence[ImageRecord], with_patches: bool
    ) -> FeatureSet | None:
        if not path.is_file():
            return None
        fix = "Fix: delete the file (it is re-extracted) or set client.on-corrupt='quarantine'"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
                if with_patches and "patches" not in names:
                    return None
                wanted = ("global", "patches") if with_patches else ("global",)
                tensors = {k: f.get_tensor(k) for k in wanted}
            ids = json.loads(meta["ids"])
        except Exception as err:  # noqa: BLE001 (any read failure is a corrupt file)
            raise CacheCorruptError(
                f"cannot read feature cache {path} (truncated or not a cache file: {err}). {fix}"
            ) from err
        sums = json.loads(meta.get("sha256", "{}"))
        ids_sum = hashlib.sha256(meta["ids"].encode()).hexdigest()
        if sums.get("ids") != ids_sum or len(ids) != len(tensors["global"]):
            raise CacheCorruptError(f"feature cache {path} fails its checksum (ids). {fix}")
        if not self._verified_before(path, meta, set(tensors)):
            try:  # streamed from disk: a multi-GB cache is checked without loading it twice
                found = safetensors_sha256(path, sorted(tensors))
            except (OSError, ValueError) as err:
                raise CacheCorruptError(
                    f"cannot check feature cache {path} ({err}). {fix}"
                ) from err
            for name in sorted(tensors):
                if sums.get(name) != found[name]:
                    raise CacheCorruptError(
                        f"feature cache {path} fails its checksum ({name}). {fix}"
                    )
            self._remember_verified(path, meta, set(tensors))
        global_ = tensors["global"]
        patches = tensors.get("patches") if with_patches else None
        labels_by_id = {r.image_id: r.label for r in records}
        labels = torch.tensor([labels_by_id[i] for i in ids], dtype=torch.long)
        skipped = int(meta.get("skipped", "0"))
        log.info("feature cache hit: %s (%d images)", path.name, len(ids))
        return FeatureSet(ids, labels, global_, patches, skipped)

    # -- verification memo: a file's tensors are hashed once, not every message ------------
    @staticmethod
    def _fingerprint(path: Path, meta: dict[str, str], names: set[str]) -> str:
        """What must be unchanged for an earlier verification to hold: the file's size, inode,
        modification and change times, its header (every tensor's checksum) and what was read.
        A rewritten, truncated or replaced file changes at least one of them."""
        st = path.stat()
        header = json.dumps(meta, sort_keys=True)
        return hashlib.sha256(
            f"{st.st_size}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}|{sorted(names)}|"
            f"{header}".encode()
        ).hexdigest()

    def _verified_before(self, path: Path, meta: dict[str, str], names: set[str]) -> bool:
        memo = path.with_name(path.name + VERIFIED_SUFFIX)
        try:
            seen = memo.read_text().split()
        except OSError:
            return False
        return self._fingerprint(path, meta, names) in seen

    def _remember_verified(self, path: Path, meta: dict[str, str], names: set[str]) -> None:
        memo = path.with_name(path.name + VERIFIED_SUFFIX)
        try:  # best effort: an unwritable memo only costs the hashing next time
            seen = memo.read_text().split() if memo.is_file() else []
            text = "\n".join([*seen[-3:], self._fingerprint(path, meta, names)]) + "\n"
            atomic_write_text(memo, text)
        except OSError:
            pass

    def _save(self, path: Path, feats: FeatureSet) -> None:
        """Write to a temporary file, fsync, then rename: a crash never leaves half a file."""
        self.root.mkdir(parents=True, exist_ok=True)
        tensors = {"global": feats.global_.contiguous()}
        if feats.patches is not None:
            tensors["patches"] = feats.patches.contiguous()
        ids = json.dumps(feats.ids)
        sums = {k: tensor_sha256(v) for k, v in tensors.items()}
        sums["ids"] = hashlib.sha256(ids.encode()).hexdigest()
        meta = {"ids": ids, "skipped": str(feats.skipped), "sha256": json.dumps(sums)}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            save_file(tensors, str(tmp), metadata=meta)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
