"""Scoring over cached frozen features: accuracy, CE and per-class accuracy of a head's logits
(the same :func:`~task.methods.heads.compute_logits` training and prediction use)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from task.config import LossConfig
from task.local.features import FeatureSet
from task.local.train import EvalResult, batch_of
from task.methods.heads import compute_logits
from task.model.prompts import PromptFeatures, PromptLearner


@torch.no_grad()
def prompt_features(learner: PromptLearner) -> PromptFeatures:
    """Class text features of every prompt the learner holds, without gradients."""
    return learner(shared=True, personal=True)


def per_class(
    pred: torch.Tensor, labels: torch.Tensor, n_classes: int
) -> tuple[float, list[float]]:
    """Accuracy and per-class accuracy (NaN for a class absent from ``labels``)."""
    correct = (pred == labels).float()
    counts = torch.bincount(labels, minlength=n_classes).float()
    hits = torch.bincount(labels, weights=correct, minlength=n_classes)
    per = torch.where(counts > 0, hits / counts.clamp(min=1), torch.nan)
    return float(correct.mean()), per.tolist()


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
    accuracy, per = per_class(torch.cat(preds), features.labels, n_classes)
    return EvalResult(accuracy, loss_sum / n, n, per)


@dataclass
class MixChoice:
    """The θ a client chose for its personalised head, and how each θ scored."""

    theta: float
    scores: list[tuple[float, float, float]]  # (θ, mean CE, accuracy) on the selection split


@torch.no_grad()
def choose_mix(
    text: PromptFeatures,
    selection: FeatureSet,
    head: str,
    loss_cfg: LossConfig,
    logit_scale: float,
    grid: int,
    fallback: float,
) -> MixChoice:
    """θ in ``linspace(0, 1, grid)`` whose personalised head has the lowest mean CE on the
    client's selection split (held out of its training; CE, a proper score, is steadier than
    accuracy on a few dozen images); ties go to the smaller θ (more of the shared prompt).
    An empty selection split keeps ``fallback``."""
    if len(selection) == 0 or text.shared is None or text.personal is None:
        return MixChoice(fallback, [])
    scores = []
    for theta in (i / (grid - 1) for i in range(grid)):
        mixed = dataclasses.replace(text, mix=theta)
        res = evaluate(mixed, selection, head, loss_cfg, logit_scale, personalised=True)
        scores.append((theta, res.loss, res.accuracy))
    best = min(scores, key=lambda s: (s[1], s[0]))
    return MixChoice(best[0], scores)


def label_skew_mix(labels: list[int], n_classes: int, low: float, high: float) -> float:
    """θ of the ``entropy`` head from a client's training labels: its label skew
    ``u = 1 - H(p)/log C`` (0: every class evenly, 1: one class) mapped linearly from 0 at
    ``low`` to 1 at ``high`` (clamped)."""
    if n_classes < 2 or not labels:
        return 0.0
    p = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=n_classes).double()
    p = p[p > 0] / p.sum()
    skew = 1.0 - float(-(p * p.log()).sum()) / math.log(n_classes)
    return min(1.0, max(0.0, (skew - low) / (high - low)))
