"""Local training and evaluation of ``fedavg-full`` (task.methods.fedavg_full's model) on raw
images: a step decodes and preprocesses a batch of images and runs the encoder forward and
backward (no feature cache: the encoder trains)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from task.config import TrainConfig
from task.data.records import CorruptImageError, ImageRecord, load_rgb
from task.local.evaluate import per_class
from task.local.train import EvalResult, TrainResult, make_optimizer
from task.methods.fedavg_full import FullFinetuneModel
from task.model.backbone import Backbone

log = logging.getLogger(__name__)


def _batch(
    backbone: Backbone, records: Sequence[ImageRecord], skip_corrupt: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Pixels and labels of the readable images of ``records`` (None when none is)."""
    images, labels = [], []
    for rec in records:
        try:
            images.append(load_rgb(rec.path))
        except CorruptImageError as err:
            if not skip_corrupt:
                raise
            log.warning("skipping corrupt image (data.skip-corrupt): %s", err)
            continue
        labels.append(rec.label)
    if not images:
        return None
    return backbone.preprocess(images).float(), torch.tensor(labels, dtype=torch.long)


def train_full(
    model: FullFinetuneModel,
    backbone: Backbone,
    records: Sequence[ImageRecord],
    train_cfg: TrainConfig,
    seed: int,
    skip_corrupt: bool = False,
) -> TrainResult:
    """Local epochs of CE on images (encoder + head); returns mean loss and example count."""
    if train_cfg.epochs == 0 or len(records) == 0:
        return TrainResult(0.0, 0, 0)
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg)
    scaler = torch.amp.GradScaler(model.device.type, enabled=model.compute_dtype == torch.float16)
    generator = torch.Generator().manual_seed(seed)
    total, steps, seen = 0.0, 0, 0
    for _ in range(train_cfg.epochs):
        order = torch.randperm(len(records), generator=generator).tolist()
        for start in range(0, len(records), train_cfg.batch_size):
            batch = _batch(
                backbone,
                [records[i] for i in order[start : start + train_cfg.batch_size]],
                skip_corrupt,
            )
            if batch is None:
                continue
            pixels, labels = batch
            loss = F.cross_entropy(model(pixels), labels.to(model.device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach())
            steps += 1
            seen += len(labels)
    model.eval()
    if steps == 0:
        raise ValueError(f"no readable images among {len(records)} training records")
    mean = total / steps
    return TrainResult(mean, seen, steps, {"ce": mean, "loss": mean})


@torch.no_grad()
def evaluate_full(
    model: FullFinetuneModel,
    backbone: Backbone,
    records: Sequence[ImageRecord],
    batch_size: int = 64,
    skip_corrupt: bool = False,
) -> EvalResult:
    """Accuracy, mean CE and per-class accuracy of the fine-tuned encoder + head."""
    n_classes = model.head.out_features
    if len(records) == 0:
        return EvalResult(float("nan"), float("nan"), 0, [float("nan")] * n_classes)
    model.eval()
    preds, targets, loss_sum = [], [], 0.0
    for start in range(0, len(records), batch_size):
        batch = _batch(backbone, records[start : start + batch_size], skip_corrupt)
        if batch is None:
            continue
        pixels, y = batch
        logits = model(pixels).float().cpu()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        preds.append(logits.argmax(dim=1))
        targets.append(y)
    if not preds:
        return EvalResult(float("nan"), float("nan"), 0, [float("nan")] * n_classes)
    labels = torch.cat(targets)
    accuracy, per = per_class(torch.cat(preds), labels, n_classes)
    n = len(labels)
    return EvalResult(accuracy, loss_sum / n, n, per)
