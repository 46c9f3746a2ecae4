"""Synthetic image folders for data-layer tests (no dependence on ../shared)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[3].parent / "shared"


def write_image(
    path: Path, fmt: str = "JPEG", mode: str = "RGB", size: int = 8, value: int = 0
) -> Path:
    """A tiny image file; `value` varies the pixels so files differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    if mode == "I;16":
        arr = rng.integers(0, 65535, (size, size), dtype=np.uint16)
        Image.fromarray(arr).save(path, format=fmt)
        return path
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """make_tree({"class": n_images, ...}, name="ds", ext=".jpg") -> root folder."""

    def _make(classes: dict[str, int], name: str = "ds", ext: str = ".jpg") -> Path:
        root = tmp_path / name
        fmt = {".jpg": "JPEG", ".png": "PNG", ".tif": "TIFF"}[ext]
        for c, (cls, n) in enumerate(sorted(classes.items())):
            (root / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_image(root / cls / f"{cls}{i:03d}{ext}", fmt, value=c * 1000 + i)
        return root

    return _make
