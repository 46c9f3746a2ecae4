"""Local training over cached frozen features: read top to bottom, one loop.

The image side is frozen and cached, so a step is: encode every class prompt (one batched text
transformer call), score a batch of cached image features, back-propagate into the context
vectors. What the loss is belongs to the method (``method.objective``, plus FedProx's
``parameter_penalty``). ``fedavg-full`` trains the image encoder itself and cannot use cached
features: its loop is task.local.train_full.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from task.config import LossConfig, TrainConfig
from task.local.features import FeatureSet
from task.methods.base import Method
from task.model.prompts import PromptLearner


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
    mix: float | None = None,
) -> TrainResult:
    """Local epochs of SGD/AdamW on the learner's context vectors; returns mean loss.

    ``global_state``: the round's global shared tensors (FedProx's anchor; default: the
    learner's shared tensors as they are when ``train`` starts). ``mix``: θ of the
    personalised CLIP head, a client's own (``entropy`` head); None: as the method and the
    learner's prompt config say (``Method.train_mix``: a fixed mix, or the personal prompt).
    """
    if not method.uses_cached_features:
        raise ValueError(f"{method.name} trains on images: use task.local.train_full")
    if not method.trains or train_cfg.epochs == 0 or len(features) == 0:
        return TrainResult(0.0, 0, 0)
    penalty = method.parameter_penalty(learner, loss_cfg, global_state)
    mix = method.train_mix(learner.cfg) if mix is None else mix
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
            feats = method.step_features(learner)
            feats.mix, feats.mix_renorm = mix, method.mix_renorm
            obj = method.objective(loss_cfg, feats, image_global, patches, labels, logit_scale)
            total = obj.loss
            if penalty is not None:
                name, weight, value = penalty()
                total = total + weight * value
                obj.parts[name] = float(value.detach())
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
