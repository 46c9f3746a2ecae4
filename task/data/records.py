"""Image records (id, path, label) and the one image loader every consumer uses.

Records hold paths, never decoded pixels, so a 31,500-image federation costs a few MB.
`load_rgb` is the single place that decodes: it always returns RGB and turns any decode
problem into CorruptImageError naming the file, so bad files never crash deep in training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from task.data.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image: a machine-independent id, a local path, a label index."""

    image_id: str  # relative, e.g. "ucmerced/agricultural/agricultural00.jpg"
    path: str  # absolute local path
    label: int  # index into Federation.class_names


class CorruptImageError(DataError):
    """An image file that cannot be read or decoded; the message names the file."""


_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    EOFError,
)


def _corrupt(path: str, err: BaseException) -> CorruptImageError:
    return CorruptImageError(
        f"cannot read image {path}: {type(err).__name__}: {err}. Fix: replace or delete the "
        "file, or set data.skip-corrupt=true to skip such files"
    )


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; high-bit-depth images are scaled by their maximum."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        if hi > 255.0:
            arr = arr * (255.0 / hi)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Fully decode `path` to an RGB image; raise CorruptImageError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except _DECODE_ERRORS as err:
        raise _corrupt(path, err) from err


def check_image(path: str, decode: bool = True) -> None:
    """Cheap check (header only) or full decode; raise CorruptImageError naming the file."""
    if decode:
        load_rgb(path)
        return
    try:
        with Image.open(path) as im:
            if im.width < 1 or im.height < 1:
                raise ValueError("image has no pixels")
    except _DECODE_ERRORS as err:
        raise _corrupt(path, err) from err


def validate_images(
    records: Sequence[ImageRecord],
    skip_corrupt: bool = False,
    decode: bool = False,
    workers: int = 8,
) -> tuple[list[ImageRecord], int]:
    """Check every record before training; return (kept records, number skipped).

    With skip_corrupt=False the first bad file (in record order) raises CorruptImageError;
    with True bad files are logged, counted and dropped.
    """

    def probe(rec: ImageRecord) -> CorruptImageError | None:
        try:
            check_image(rec.path, decode=decode)
        except CorruptImageError as err:
            return err
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(probe, records, chunksize=64))
    kept: list[ImageRecord] = []
    skipped = 0
    for rec, err in zip(records, results, strict=True):
        if err is None:
            kept.append(rec)
        elif skip_corrupt:
            skipped += 1
            log.warning("skipping corrupt image %s (%s)", rec.image_id, err)
        else:
            raise err
    if skipped:
        log.warning(
            "skipped %d corrupt image(s) of %d (data.skip-corrupt=true)", skipped, len(records)
        )
    return kept, skipped


def class_histogram(records: Iterable[ImageRecord], num_classes: int) -> list[int]:
    """Images per class label, as a plain list (for manifests and checks)."""
    counts = [0] * num_classes
    for rec in records:
        counts[rec.label] += 1
    return counts
