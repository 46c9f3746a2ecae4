"""Pick the adapter from the loaded model's class (never from a user flag)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from task.model.families.base import Towers, UnsupportedModelError
from task.model.families.clip import clip_towers
from task.model.families.dual_encoder import dual_encoder_towers
from task.model.families.siglip import siglip_towers

FAMILIES: dict[str, Callable[[nn.Module, object], Towers]] = {
    "CLIPModel": clip_towers,
    "VisionTextDualEncoderModel": dual_encoder_towers,
    "SiglipModel": siglip_towers,
}
# config.json model_type -> family name (what towers_for reports for that class)
FAMILY_OF_TYPE = {"clip": "clip", "vision-text-dual-encoder": "dual-encoder", "siglip": "siglip"}
SUPPORTED_MODEL_TYPES = frozenset(FAMILY_OF_TYPE)


def towers_for(model: nn.Module, tokenizer: object) -> Towers:
    """The text and vision towers of a supported dual encoder."""
    build = FAMILIES.get(type(model).__name__)
    if build is None:
        raise UnsupportedModelError(
            f"model class {type(model).__name__} is not a supported dual encoder; supported: "
            f"{sorted(FAMILIES)} (OpenCLIP checkpoints: convert them with "
            "`python -m task.model.families.convert_openclip`)"
        )
    return build(model, tokenizer)
