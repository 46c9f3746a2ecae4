"""Zero-shot: class features from hand-written remote-sensing templates (an ensemble), through the
model's own ``get_text_features`` (any supported family)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from task.model.backbone import Backbone
from task.model.prompts import PromptFeatures

RS_TEMPLATES: tuple[str, ...] = (
    "a satellite photo of a {}.",
    "an aerial image of {}.",
    "a remote sensing image of a {}.",
    "a top-down view of {}.",
    "an aerial photo of a {}.",
    "a satellite image of {}.",
)


@torch.no_grad()
def zeroshot_features(
    backbone: Backbone, class_names: list[str], templates: tuple[str, ...] = RS_TEMPLATES
) -> PromptFeatures:
    """Mean of the normalised template features per class, renormalised (CLIP's ensembling)."""
    per_template = []
    for template in templates:
        out = backbone.encode_sentences([template.format(c) for c in class_names])
        per_template.append(F.normalize(out.float(), dim=-1))
    mean = torch.stack(per_template).mean(dim=0)
    return PromptFeatures(shared=F.normalize(mean, dim=-1), personal=None)
