import math

import torch
import torch.nn.functional as F

from task.config import LossConfig, PromptConfig, TrainConfig
from task.local.evaluate import evaluate, prompt_features
from task.local.features import FeatureSet
from task.local.train import train
from task.methods import get_method
from task.model.prompts import PromptLearner
from task.model.zeroshot import zeroshot_features
from testkit.images import TINY_CLASSES


def _separable_features(learner, n_per_class=12, n_patches=4, seed=0):
    """Image features clustered around random class directions (a learnable task)."""
    g = torch.Generator().manual_seed(seed)
    c = len(TINY_CLASSES)
    d = 16
    centres = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    labels = torch.arange(c).repeat_interleave(n_per_class)
    glob = F.normalize(centres[labels] + 0.3 * torch.randn(len(labels), d, generator=g), dim=-1)
    patches = F.normalize(
        glob[:, None, :] + 0.3 * torch.randn(len(labels), n_patches, d, generator=g), dim=-1
    )
    ids = [f"img{i}" for i in range(len(labels))]
    return FeatureSet(ids, labels, glob, patches.half())


def test_training_improves_personalised_accuracy(tiny_backbone):
    learner = PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig(init=""), seed=0)
    feats = _separable_features(learner)
    loss_cfg = LossConfig(alpha=0.5, beta=0.1, ot_iters=50)
    method = get_method("fedrsclip")
    before = evaluate(prompt_features(learner), feats, "clip+ot", loss_cfg, 20.0, True)
    shared_before = learner.shared_ctx.detach().clone()
    result = train(
        learner,
        method,
        feats,
        loss_cfg,
        TrainConfig(epochs=15, batch_size=16, lr=0.05, optimizer="adamw"),
        20.0,
        seed=0,
    )
    after = evaluate(prompt_features(learner), feats, "clip+ot", loss_cfg, 20.0, True)
    assert result.num_examples == 15 * len(feats) and result.steps == 15 * 4
    assert set(result.parts) == {"ce", "ce_global", "dpa", "ot", "loss"}
    assert after.accuracy > before.accuracy + 0.2
    assert after.loss < before.loss
    assert not torch.equal(shared_before, learner.shared_ctx)


def test_training_is_seeded(tiny_backbone):
    results = []
    for _ in range(2):
        learner = PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig(), seed=0)
        feats = _separable_features(learner)
        train(learner, get_method("promptfl"), feats, LossConfig(), TrainConfig(epochs=2), 10.0, 7)
        results.append(learner.shared_ctx.detach().clone())
    assert torch.equal(results[0], results[1])


def test_evaluate_reports_per_class_and_nan_for_absent(tiny_backbone):
    learner = PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig(), with_private=False)
    feats = _separable_features(learner)
    keep = feats.labels != 0
    subset = FeatureSet(
        [i for i, k in zip(feats.ids, keep, strict=True) if k],
        feats.labels[keep],
        feats.global_[keep],
        None,
    )
    res = evaluate(prompt_features(learner), subset, "clip", LossConfig(), 10.0, False)
    assert len(res.per_class_accuracy) == len(TINY_CLASSES)
    assert math.isnan(res.per_class_accuracy[0])
    assert res.num_examples == int(keep.sum())
    assert 0.0 <= res.accuracy <= 1.0


def test_zeroshot_features_are_normalised_ensemble(tiny_backbone):
    feats = zeroshot_features(tiny_backbone, TINY_CLASSES, templates=("a {}.", "the {}."))
    assert feats.shared.shape == (len(TINY_CLASSES), 16) and feats.personal is None
    torch.testing.assert_close(feats.shared.norm(dim=-1), torch.ones(len(TINY_CLASSES)))
