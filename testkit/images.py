"""Synthetic image folders: one colour per class plus noise, so classes are separable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_CLASSES = ["river", "beach", "forest", "farm", "port"]


def write_synthetic_images(
    root: Path, classes: list[str], per_class: int, size: int = 40, seed: int = 0
) -> Path:
    """<root>/<class>/<class>_NN.png with class-dependent colour so classes are separable."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        base = np.array([(c * 53) % 256, (c * 97) % 256, (c * 151) % 256], dtype=np.float32)
        for i in range(per_class):
            noise = rng.normal(0, 20, size=(size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.png")
    return root
