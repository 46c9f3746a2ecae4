"""One small adapter per dual-encoder family (see base.py for what each provides)."""

from task.model.families.base import (
    ImageFeatures,
    TextTower,
    Towers,
    UnsupportedModelError,
    VisionTower,
    tokenize_class_prompts,
)
from task.model.families.families import FAMILIES, towers_for

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
