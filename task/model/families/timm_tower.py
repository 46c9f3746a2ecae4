"""timm image models (``TimmWrapperModel``) as vision towers, CNNs in particular.

A CNN has no tokens: its ``last_hidden_state`` is the final feature map (B, C, H, W) and its
``pooler_output`` the model's global pooling of it (average pooling for EfficientNet). The patch
tokens are the map's cells, (B, C, H, W) -> (B, HW, C), through the same ``visual_projection``
as the pooled feature; with average pooling and a linear projection the global feature is then
exactly the mean of the projected cells. A timm transformer's tokens (B, N, C) give its patch
tokens after the prefix (class/register) tokens, through its ``fc_norm`` when it has one.

Convolutions run in channels-last memory layout: PyTorch's CPU kernels for depthwise and 1x1
convolutions are about twice as fast that way for EfficientNet-Lite0 on 2 cores
(bench: ``python -m bench.local_step``); results agree with the default layout to float
rounding (tests/task/model/test_families.py).
"""

from __future__ import annotations

import torch
from torch import nn

from task.model.families.base import VisionTower


class TimmVisionTower(VisionTower):
    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module) -> None:
        super().__init__(vision_model, visual_projection)
        self.channels_last = True
        vision_model.to(memory_format=torch.channels_last)

    def prepare(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = super().prepare(pixel_values)
        if self.channels_last and pixels.dim() == 4:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def pooled_tokens(self, output: object) -> torch.Tensor:
        hidden = output.last_hidden_state
        if hidden.dim() == 4:  # CNN feature map
            return hidden.flatten(2).transpose(1, 2)
        inner = self.vision_model.timm_model
        tokens = hidden[:, int(getattr(inner, "num_prefix_tokens", 0)) :, :]
        fc_norm = getattr(inner, "fc_norm", None)
        return fc_norm(tokens) if isinstance(fc_norm, nn.Module) else tokens
