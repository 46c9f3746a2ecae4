"""OpenAI-style CLIP (``CLIPModel``): causal text transformer pooled at the end token, ViT with a
class token.

transformers 5.x ``CLIPTextModel.forward`` takes no ``inputs_embeds``, so the text tower composes
the model's own parts: embeddings (token embeddings given, positions added), the encoder with the
causal mask the model builds itself, the final layer norm and the projection, pooled at the end
token. Attention is causal and the feature is read at the end token, so tokens after it never
influence it: sequences can be cut to the longest real prompt with no change in the result
(tests/task/model/test_prompts.py proves it against the 77-token path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from task.model.families.base import TextTower, Towers, VisionTower

if TYPE_CHECKING:  # annotations only: importing the modeling module costs seconds
    from transformers import CLIPModel


class ClipTextTower(TextTower):
    """CLIP's text transformer fed with prompt embeddings; feature at the end token."""

    def __init__(self, text_model: nn.Module, text_projection: nn.Module, pad_id: int) -> None:
        text_model = getattr(text_model, "text_model", text_model)  # CLIPTextModel or inner
        embedding = text_model.embeddings.token_embedding
        super().__init__(embedding, text_model.config.max_position_embeddings, pad_id)
        self.text_model = text_model
        self.text_projection = text_projection

    def forward(self, embeds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tm = self.text_model
        hidden = tm.embeddings(inputs_embeds=embeds)
        # Positional: the cache argument's name changed within transformers 5.x.
        mask = create_causal_mask(tm.config, hidden, None, None)
        hidden = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
        last = hidden.last_hidden_state
        rows = torch.arange(last.shape[0], device=last.device)
        eos = lengths.to(last.device) - 1  # the end token is each prompt's last real token
        # LayerNorm is per token, so normalising only the pooled rows is exact and cheaper.
        pooled = tm.final_layer_norm(last[rows, eos])
        return self.text_projection(pooled)

    def encode_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.text_model(
            input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
        )
        return self.text_projection(out.pooler_output)


class ClipVisionTower(VisionTower):
    """CLIP's ViT: global = projection of the post-layernorm class token; patches = the same
    layernorm and projection applied to tokens 1..P (the choice OT-based prompt methods make)."""

    def pooled_tokens(self, output: object) -> torch.Tensor:
        inner = getattr(self.vision_model, "vision_model", self.vision_model)
        return inner.post_layernorm(output.last_hidden_state[:, 1:, :])


def clip_towers(model: CLIPModel, tokenizer: object) -> Towers:
    pad_id = _pad_id(tokenizer, model.config.text_config)
    text = ClipTextTower(model.text_model, model.text_projection, pad_id)
    return Towers("clip", text, ClipVisionTower(model.vision_model, model.visual_projection))


def _pad_id(tokenizer: object, text_config: object) -> int:
    """The tokenizer's pad id; CLIP checkpoints often pad with the end token."""
    for value in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(text_config, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if value is not None:
            return int(value)
    return 0
