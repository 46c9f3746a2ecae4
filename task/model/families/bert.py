"""BERT-family text towers (``BertModel``, RoBERTa-like) inside a ``VisionTextDualEncoderModel``.

The prompt is ``[CLS] ctx_1 .. ctx_h <class tokens> . [SEP] [PAD] ..``; the feature is the
model's ``pooler_output`` (tanh(W h_[CLS] + b)) through ``text_projection``, exactly as
``VisionTextDualEncoderModel.get_text_features`` computes it. Attention is bidirectional, so
padding is excluded with the attention mask: with the mask, cutting the padding is exact
(tests/task/model/test_families.py); without it, it would not be.
"""

from __future__ import annotations

import torch
from torch import nn

from task.model.families.base import TextTower, UnsupportedModelError


class BertTextTower(TextTower):
    """Context vectors after [CLS]; attention mask over real tokens; token type 0 everywhere."""

    def __init__(self, text_model: nn.Module, text_projection: nn.Module, pad_id: int) -> None:
        embeddings = getattr(text_model, "embeddings", None)
        if embeddings is None or not hasattr(embeddings, "word_embeddings"):
            raise UnsupportedModelError(
                f"text tower {type(text_model).__name__} has no BERT-style word embeddings"
            )
        if getattr(text_model, "pooler", None) is None:
            raise UnsupportedModelError(
                f"text tower {type(text_model).__name__} has no pooler, which "
                "VisionTextDualEncoderModel uses as the text feature"
            )
        super().__init__(
            embeddings.word_embeddings, text_model.config.max_position_embeddings, pad_id
        )
        self.text_model = text_model
        self.text_projection = text_projection

    def forward(self, embeds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        n, length = embeds.shape[:2]
        positions = torch.arange(length, device=embeds.device)
        mask = (positions.unsqueeze(0) < lengths.to(embeds.device).unsqueeze(1)).long()
        out = self.text_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            token_type_ids=torch.zeros_like(mask),
        )
        return self.text_projection(out.pooler_output)

    def encode_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.text_model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            token_type_ids=inputs.get("token_type_ids"),
        )
        return self.text_projection(out.pooler_output)
