"""Hugging Face ``ViTModel`` as the vision tower of a ``VisionTextDualEncoderModel``.

Its ``pooler_output`` is tanh(W LN(h_[CLS]) + b) (ViTPooler on the final layer-normed tokens),
which ``visual_projection`` maps into the joint space. A patch token goes through the same pooler
dense layer, activation and projection, as if it were the class token.
"""

from __future__ import annotations

import torch
from torch import nn

from task.model.families.base import UnsupportedModelError, VisionTower


class VitVisionTower(VisionTower):
    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module) -> None:
        if getattr(vision_model, "pooler", None) is None:
            raise UnsupportedModelError(
                "the ViT vision tower has no pooler (add_pooling_layer=False); "
                "VisionTextDualEncoderModel needs its pooler_output"
            )
        super().__init__(vision_model, visual_projection)

    def pooled_tokens(self, output: object) -> torch.Tensor:
        pooler = self.vision_model.pooler
        return pooler.activation(pooler.dense(output.last_hidden_state[:, 1:, :]))
