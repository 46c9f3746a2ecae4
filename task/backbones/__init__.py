"""One small adapter per dual-encoder family (see base.py for what each provides)."""

from task.backbones.base import (
    ImageFeatures,
    TextTower,
    Towers,
    UnsupportedModelError,
    VisionTower,
    tokenize_class_prompts,
)
from task.backbones.families import FAMILIES, MODEL_TYPES, towers_for

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "ImageFeatures",
    "TextTower",
    "Towers",
    "UnsupportedModelError",
    "VisionTower",
    "tokenize_class_prompts",
    "towers_for",
]
