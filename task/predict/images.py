"""Classify image files with a scorer (a run's prompts or an export): find the images, decode
them a batch at a time, report the top-k classes and every unreadable file."""

from __future__ import annotations

import logging  # noqa: E402
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from task.data.records import CorruptImageError, load_rgb
from task.data.sources import IMAGE_EXTENSIONS
from task.model.backbone import Backbone
from task.predict.classifier import Scorer

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Top-k classes of one image, most probable first."""

    image: str
    classes: list[str]
    indices: list[int]
    probs: list[float]


@dataclass
class PredictionReport:
    predictions: list[Prediction]
    skipped: list[tuple[str, str]]  # (image, reason)


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files as given, folders searched recursively for image files (sorted); no duplicates.

    Raises FileNotFoundError naming every input that does not exist.
    """
    out: list[str] = []
    seen: set[str] = set()
    missing = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            found = [path]
        else:
            missing.append(str(raw))
            continue
        for p in found:
            key = str(p.resolve())
            if key not in seen:
                seen.add(key)
                out.append(str(p))
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    return out


def predict_images(
    scorer: Scorer,
    backbone: Backbone,
    paths: Sequence[str],
    top_k: int = 5,
    batch_size: int = 32,
    image_processor: object | None = None,
    progress: bool | None = None,
) -> PredictionReport:
    """Top-k predictions for every readable image; unreadable ones are skipped and reported.

    ``image_processor`` defaults to the backbone's own. ``progress``: None shows a tqdm bar
    (stderr) only when there is more than one batch.
    """
    processor = image_processor or backbone.image_processor
    k = max(1, min(top_k, len(scorer.class_names)))
    if progress is None:
        progress = len(paths) > batch_size
    predictions: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    try:
        for start in range(0, len(paths), batch_size):
            images, names = [], []
            for path in paths[start : start + batch_size]:
                try:
                    images.append(load_rgb(path))
                    names.append(path)
                except CorruptImageError as err:
                    reason = str(err.__cause__ or err)
                    skipped.append((path, reason))
                    msg = f"skipping unreadable image {path}: {reason}"
                    if progress:
                        bar.write(f"warning: {msg}", file=sys.stderr)
                    else:
                        log.warning(msg)
            if images:
                predictions.extend(_predict_batch(scorer, backbone, processor, images, names, k))
            bar.update(len(paths[start : start + batch_size]))
    finally:
        bar.close()
    return PredictionReport(predictions, skipped)


def _predict_batch(
    scorer: Scorer,
    backbone: Backbone,
    processor: object,
    images: list,
    names: list[str],
    k: int,
) -> list[Prediction]:
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    feats = backbone.encode_images(pixels.to(backbone.device, backbone.dtype), scorer.needs_patches)
    logits = scorer.logits(feats.global_, feats.patches)
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    top = probs.topk(k, dim=-1)
    out = []
    for name, values, idx in zip(names, top.values.tolist(), top.indices.tolist(), strict=True):
        out.append(Prediction(name, [scorer.class_names[i] for i in idx], idx, values))
    return out
