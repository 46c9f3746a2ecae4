"""``fedavg-full``: FedAvg fine-tuning of the whole CLIP image encoder with a linear head.

The communication baseline: every round each client sends the entire image encoder (vision
transformer + visual projection) and the head, ~86.2 M numbers for ViT-B/16 against FedRSCLIP's
2,048. The encoder trains, so image features cannot be cached: a step decodes and preprocesses a
batch of images and runs the encoder forward and backward (slow on CPU; the point is the count).

Model: ``logits = head(normalize(W_v . LN_post(ViT(x)[CLS])))``. The head is a linear layer
initialised from the zero-shot text features times CLIP's temperature (bias 0), so round 0 is
zero-shot CLIP with the remote-sensing template ensemble and every client starts from the same
state. Every parameter is trainable and shared; nothing is private.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from task.backbone import Backbone
from task.config import TrainConfig
from task.data.records import ImageRecord, load_rgb
from task.train import EvalResult, TrainResult, make_optimizer
from task.zeroshot import zeroshot_features


class FullFinetuneModel(nn.Module):
    """A trainable copy of the backbone's image encoder plus a linear classification head."""

    def __init__(self, backbone: Backbone, class_names: list[str]) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("class_names is empty")
        clip = backbone.model
        self.vision_model = copy.deepcopy(clip.vision_model).float()
        self.visual_projection = copy.deepcopy(clip.visual_projection).float()
        self.requires_grad_(True)
        text = zeroshot_features(backbone, class_names).shared  # [C, D], unit norm
        self.head = nn.Linear(text.shape[1], len(class_names))
        with torch.no_grad():
            self.head.weight.copy_(text.float() * backbone.logit_scale)
            self.head.bias.zero_()
        self.to(backbone.device)
        self.class_names = list(class_names)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_model(pixel_values=pixel_values.to(self.device, torch.float32))
        embedding = F.normalize(self.visual_projection(out.pooler_output), dim=-1)
        return self.head(embedding)


def build_full_model(backbone: Backbone, class_names: list[str]) -> FullFinetuneModel:
    """The round-0 model (identical on server and clients: no randomness)."""
    return FullFinetuneModel(backbone, class_names)


def _pixels(backbone: Backbone, records: Sequence[ImageRecord]) -> torch.Tensor:
    images = [load_rgb(r.path) for r in records]
    return backbone.preprocess(images).float()


def train_full(
    model: FullFinetuneModel,
    backbone: Backbone,
    records: Sequence[ImageRecord],
    train_cfg: TrainConfig,
    seed: int,
) -> TrainResult:
    """Local epochs of CE on images (encoder + head); returns mean loss and example count."""
    if train_cfg.epochs == 0 or len(records) == 0:
        return TrainResult(0.0, 0, 0)
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg)
    generator = torch.Generator().manual_seed(seed)
    total, steps = 0.0, 0
    for _ in range(train_cfg.epochs):
        order = torch.randperm(len(records), generator=generator).tolist()
        for start in range(0, len(records), train_cfg.batch_size):
            batch = [records[i] for i in order[start : start + train_cfg.batch_size]]
            labels = torch.tensor([r.label for r in batch], device=model.device)
            loss = F.cross_entropy(model(_pixels(backbone, batch)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
    model.eval()
    mean = total / steps
    return TrainResult(mean, len(records) * train_cfg.epochs, steps, {"ce": mean, "loss": mean})


@torch.no_grad()
def evaluate_full(
    model: FullFinetuneModel,
    backbone: Backbone,
    records: Sequence[ImageRecord],
    batch_size: int = 64,
) -> EvalResult:
    """Accuracy, mean CE and per-class accuracy of the fine-tuned encoder + head."""
    n_classes = model.head.out_features
    if len(records) == 0:
        return EvalResult(float("nan"), float("nan"), 0, [float("nan")] * n_classes)
    model.eval()
    preds, loss_sum = [], 0.0
    labels = torch.tensor([r.label for r in records], dtype=torch.long)
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        logits = model(_pixels(backbone, batch)).float().cpu()
        y = labels[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        preds.append(logits.argmax(dim=1))
    correct = (torch.cat(preds) == labels).float()
    counts = torch.bincount(labels, minlength=n_classes).float()
    hits = torch.bincount(labels, weights=correct, minlength=n_classes)
    per_class = torch.where(counts > 0, hits / counts.clamp(min=1), torch.nan)
    n = len(records)
    return EvalResult(float(correct.mean()), loss_sum / n, n, per_class.tolist())
