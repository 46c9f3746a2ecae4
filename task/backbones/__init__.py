"""One small adapter per dual-encoder family (see base.py for what each provides)."""

from task.backbones.base import (
    ImageFeatures,
    TextTower,
    Towers,
    UnsupportedModelError,
    VisionTower,
    tokenize_class_prompts,
)
from task.backbones.families import FAMILIES, towers_for

__all__ = [
    "FAMILIES",
    "ImageFeatures",
    "TextTower",
    "Towers",
    "UnsupportedModelError",
    "VisionTower",
    "tokenize_class_prompts",
    "towers_for",
]
