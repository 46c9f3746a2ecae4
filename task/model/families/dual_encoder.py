"""``VisionTextDualEncoderModel``: any vision model and any text model that transformers builds
from the config, joined by two linear projections (Hugging Face's contrastive-training example
produces these; the offline stand-in rs-lit-b0-minilm is one, EfficientNet-Lite0 + MiniLM-L6).

Each tower is picked from the built submodule's class:
vision: ``CLIPVisionModel`` (class token, post-layernorm), ``ViTModel`` (pooler) or
``TimmWrapperModel`` (CNN feature-map cells or timm ViT tokens); text: BERT-family models with a
pooler (``BertModel``, RoBERTa-like) or ``CLIPTextModel`` (causal, end token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from task.model.families.base import TextTower, Towers, UnsupportedModelError, VisionTower
from task.model.families.bert import BertTextTower
from task.model.families.clip import ClipTextTower, ClipVisionTower, _pad_id
from task.model.families.timm_tower import TimmVisionTower
from task.model.families.vit import VitVisionTower

VISION_TOWERS = {
    "CLIPVisionModel": ClipVisionTower,
    "ViTModel": VitVisionTower,
    "TimmWrapperModel": TimmVisionTower,
}

if TYPE_CHECKING:  # annotations only: importing the modeling module costs seconds
    from transformers import VisionTextDualEncoderModel


def dual_encoder_towers(model: VisionTextDualEncoderModel, tokenizer: object) -> Towers:
    return Towers(
        "dual-encoder",
        _text_tower(model.text_model, model.text_projection, tokenizer, model.config),
        _vision_tower(model.vision_model, model.visual_projection),
    )


def _vision_tower(vision_model: nn.Module, projection: nn.Module) -> VisionTower:
    name = type(vision_model).__name__
    tower = VISION_TOWERS.get(name)
    if tower is None:
        raise UnsupportedModelError(
            f"vision tower {name} is not supported; supported: {sorted(VISION_TOWERS)}"
        )
    return tower(vision_model, projection)


def _text_tower(
    text_model: nn.Module, projection: nn.Module, tokenizer: object, config: object
) -> TextTower:
    text_config = config.text_config
    if type(text_model).__name__ == "CLIPTextModel":
        return ClipTextTower(text_model, projection, _pad_id(tokenizer, text_config))
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(text_config, "pad_token_id", 0) or 0
    return BertTextTower(text_model, projection, int(pad_id))
