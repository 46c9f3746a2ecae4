"""Local training and evaluation over cached frozen features.

The image side is frozen and cached, so a step is: encode every class prompt (one batched text
transformer call), score a batch of cached image features, back-propagate into the context vectors.

``fedavg-full`` trains the image encoder itself and cannot use cached features: it has its own
loop in ``task.full_finetune`` (``train_full`` / ``evaluate_full``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from task.config import LossConfig, TrainConfig
from task.features import FeatureSet
from task.losses import compute_logits, objective, proximal_term
from task.methods import Method
from task.prompt_learner import PromptFeatures, PromptLearner


@dataclass
class TrainResult:
    """Mean training loss (and parts) over all steps, and how many examples were seen."""

    loss: float
    num_examples: int
    steps: int
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    """Accuracy, mean CE loss and per-class accuracy (NaN for classes absent from the split)."""

    accuracy: float
    loss: float
    num_examples: int
    per_class_accuracy: list[float]


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train(
    learner: PromptLearner,
    method: Method,
    features: FeatureSet,
    loss_cfg: LossConfig,
    train_cfg: TrainConfig,
    logit_scale: float,
    seed: int,
    global_state: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Local epochs of SGD/AdamW on the learner's context vectors; returns mean loss.

    ``global_state``: the round's global shared tensors, the anchor of FedProx's proximal term.
    When omitted it is the learner's shared tensors as they are when ``train`` starts, which is
    the round's global prompt whenever the caller has just loaded the server's state.
    """
    if method.full_finetune:
        raise ValueError(f"{method.name} trains on images: use task.full_finetune.train_full")
    if not method.trains or train_cfg.epochs == 0 or len(features) == 0:
        return TrainResult(0.0, 0, 0)
    named = dict(learner.named_parameters())
    prox_anchor = None
    if method.proximal and loss_cfg.prox_mu > 0:
        source = global_state if global_state is not None else named
        missing = [k for k in method.shared_keys if k not in source]
        if missing:
            raise ValueError(f"FedProx needs the global {missing} in global_state")
        prox_anchor = {k: source[k].detach().clone() for k in method.shared_keys}
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, train_cfg)
    generator = torch.Generator().manual_seed(seed)
    device = learner.device
    n = len(features)
    sums: dict[str, float] = {}
    steps = 0
    for _ in range(train_cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, train_cfg.batch_size):
            idx = order[start : start + train_cfg.batch_size]
            image_global, patches, labels = batch_of(features, idx, device)
            if method.pgp_contrastive:
                feats = learner(shared=True, personal=True, anchor=True)
            else:
                feats = learner(shared=True, personal=True)
            obj = objective(method, loss_cfg, feats, image_global, patches, labels, logit_scale)
            total = obj.loss
            if prox_anchor is not None:
                prox = proximal_term({k: named[k] for k in prox_anchor}, prox_anchor)
                total = total + loss_cfg.prox_mu * prox
                obj.parts["prox"] = float(prox.detach())
                obj.parts["loss"] = float(total.detach())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for key, value in obj.parts.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
    parts = {k: v / steps for k, v in sums.items()}
    return TrainResult(parts["loss"], n * train_cfg.epochs, steps, parts)


def batch_of(
    features: FeatureSet, idx: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Rows ``idx`` of the cached features on ``device`` (patches widened to fp32)."""
    image_global = features.global_[idx].to(device)
    patches = None if features.patches is None else features.patches[idx].to(device).float()
    return image_global, patches, features.labels[idx].to(device)


@torch.no_grad()
def prompt_features(learner: PromptLearner) -> PromptFeatures:
    """Class text features of every prompt the learner holds, without gradients."""
    return learner(shared=True, personal=True)


@torch.no_grad()
def evaluate(
    text: PromptFeatures,
    features: FeatureSet,
    head: str,
    loss_cfg: LossConfig,
    logit_scale: float,
    personalised: bool,
    batch_size: int = 256,
) -> EvalResult:
    """Accuracy of the personalised (shared + personal) or global (shared-only) classifier.

    A method without a shared prompt (``local``) has no global model: its global result is NaN.
    """
    n = len(features)
    n_classes = len(text.shared if text.shared is not None else text.personal)
    if n == 0 or (not personalised and text.shared is None):
        return EvalResult(float("nan"), float("nan"), 0, [float("nan")] * n_classes)
    device = (text.shared if text.shared is not None else text.personal).device
    preds, loss_sum = [], 0.0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        image_global, patches, labels = batch_of(features, idx, device)
        logits, _ = compute_logits(
            head, text, image_global, patches, logit_scale, loss_cfg, personalised
        )
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        preds.append(logits.argmax(dim=1).cpu())
    pred = torch.cat(preds)
    correct = (pred == features.labels).float()
    counts = torch.bincount(features.labels, minlength=n_classes).float()
    hits = torch.bincount(features.labels, weights=correct, minlength=n_classes)
    per_class = torch.where(counts > 0, hits / counts.clamp(min=1), torch.nan)
    return EvalResult(float(correct.mean()), loss_sum / n, n, per_class.tolist())
