"""SigLIP (``SiglipModel``): a bidirectional text transformer read at the last position, and a
ViT without class token whose global feature comes from a multi-head attention-pooling head.

Text: SigLIP was trained with every text padded to ``max_position_embeddings`` (64) with no
attention mask, and its feature is the last position's hidden state (layer-normed, through the
text ``head``), which is usually a pad token. So a prompt is ``ctx_1 .. ctx_h <class tokens> .
</s> <pad> ..`` (the tokenizer adds no start token) padded to the full length, exactly what
``get_text_features`` sees for ``padding="max_length"``; nothing may be cut (``exact_cut`` False).

Vision: the global feature is the attention-pooling head over all patch tokens (no projection:
the head's output is already the joint space). A patch token's feature is that head applied to
the token alone: with one key, attention puts all its weight on it, so the head reduces to its
value/output projections and MLP, the same map the pooled token goes through.

The logit bias of SigLIP's sigmoid loss is one number added to every class's logit, so it
changes neither a softmax over classes nor an argmax; only ``logit_scale`` is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from task.model.families.base import TextTower, Towers, UnsupportedModelError, VisionTower

if TYPE_CHECKING:  # annotations only: importing the modeling module costs seconds
    from transformers import SiglipModel


class SiglipTextTower(TextTower):
    exact_cut = False
    sentence_padding = "max_length"

    def __init__(self, text_model: nn.Module, pad_id: int) -> None:
        text_model = _inner(text_model, "text_model")
        super().__init__(
            text_model.embeddings.token_embedding,
            text_model.config.max_position_embeddings,
            pad_id,
        )
        self.text_model = text_model

    @property
    def embed_dim(self) -> int:
        return int(self.text_model.head.weight.shape[0])

    def forward(self, embeds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if embeds.shape[1] != self.max_positions:
            raise ValueError(
                f"SigLIP prompts must be {self.max_positions} tokens long, got {embeds.shape[1]}"
            )
        tm = self.text_model
        hidden = tm.embeddings(inputs_embeds=embeds)
        hidden = tm.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state
        return tm.head(tm.final_layer_norm(hidden[:, -1, :]))

    def encode_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # SigLIP attends to its padding, as it was trained: no attention mask.
        return self.text_model(input_ids=inputs["input_ids"]).pooler_output


class SiglipVisionTower(VisionTower):
    def __init__(self, vision_model: nn.Module) -> None:
        head = getattr(_inner(vision_model, "vision_model"), "head", None)
        if head is None:
            raise UnsupportedModelError(
                "this SigLIP vision tower has no attention-pooling head (vision_use_head=False)"
            )
        super().__init__(vision_model, nn.Identity())  # the head maps into the joint space

    def pooled_tokens(self, output: object) -> torch.Tensor:
        head = _inner(self.vision_model, "vision_model").head
        tokens = output.last_hidden_state  # already post-layernormed; no class token
        b, p, w = tokens.shape
        return head(tokens.reshape(b * p, 1, w)).reshape(b, p, -1)


def _inner(module: nn.Module, name: str) -> nn.Module:
    """transformers versions differ in whether the tower wraps an inner ``*_model``."""
    inner = getattr(module, name, None)
    return inner if isinstance(inner, nn.Module) else module


def siglip_text_tower(text_model: nn.Module, tokenizer: object, config: object) -> SiglipTextTower:
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(config.text_config, "pad_token_id", 1)
    return SiglipTextTower(text_model, int(pad_id))


def siglip_towers(model: SiglipModel, tokenizer: object) -> Towers:
    text = siglip_text_tower(model.text_model, tokenizer, model.config)
    return Towers("siglip", text, SiglipVisionTower(model.vision_model))
