"""Hugging Face ``ViTModel`` as the vision tower of a ``VisionTextDualEncoderModel``.

Its ``pooler_output`` is tanh(W LN(h_[CLS]) + b) (ViTPooler on the final layer-normed tokens),
which ``visual_projection`` maps into the joint space. A patch token goes through the same pooler
dense layer, activation and projection, as if it were the class token.
"""

from __future__ import annotations

import torch
from torch import nn

from task.backbones.base import UnsupportedModelError, VisionTower


class VitVisionTower(VisionTower):
    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module) -> None:
        super().__init__()
        if getattr(vision_model, "pooler", None) is None:
            raise UnsupportedModelError(
                "the ViT vision tower has no pooler (add_pooling_layer=False); "
                "VisionTextDualEncoderModel needs its pooler_output"
            )
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def project(
        self, pixel_values: torch.Tensor, with_patches: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.vision_model(pixel_values=pixel_values)
        global_ = self.visual_projection(out.pooler_output)
        patches = None
        if with_patches:
            pooler = self.vision_model.pooler
            tokens = pooler.activation(pooler.dense(out.last_hidden_state[:, 1:, :]))
            patches = self.visual_projection(tokens)
        return global_, patches
