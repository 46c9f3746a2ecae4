"""Three bugs a review found (issue #18); each test failed before its fix.

* moving ``cache.dir`` kept a run's name but changed its fingerprint, so resuming failed with
  "config differs in ['cache.dir']";
* exporting a ``fedpgp`` client failed with a shape error blaming "another model" (the
  classifier built its learner without the method's low-rank private part);
* a ``fedotp`` run with ``prompt.fusion=concat`` was scored with concat fusion, although the
  method trains with its fixed ``separate`` fusion.
"""

from __future__ import annotations

import torch

from task.config import parse_run_config
from task.methods import get_method
from task.predict.classifier import class_features
from task.runs.run_dir import RunDir
from testkit.images import TINY_CLASSES


def test_moving_the_feature_cache_keeps_a_run_resumable(tmp_path):
    flat = {"cache.dir": "/old/features", "data.cache-dir": "/old/datasets", "train.lr": 0.1}
    first = RunDir.open(tmp_path, "run", flat, resume=True)
    moved = {**flat, "cache.dir": "/new/features", "data.cache-dir": "/new/datasets"}
    again = RunDir.open(tmp_path, "run", moved, resume=True)
    assert again.experiment_id == first.experiment_id


def _trained_state(method_name: str, backbone, cfg) -> dict[str, torch.Tensor]:
    """The tensors a client of this method holds after training (random, right shapes)."""
    learner = get_method(method_name).build_learner(backbone, TINY_CLASSES, cfg, seed=3)
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in learner.state_dict().items()}


def _training_features(method_name: str, backbone, cfg, state):
    learner = get_method(method_name).build_learner(backbone, TINY_CLASSES, cfg.prompt)
    learner.load_state_dict(state)
    with torch.no_grad():
        return learner(shared=True, personal=True)


def test_fedpgp_client_exports_with_its_low_rank_private_part(tiny_backbone):
    cfg = parse_run_config({"method.name": "fedpgp", "model.device": "cpu"})
    state = _trained_state("fedpgp", tiny_backbone, cfg.prompt)
    feats = class_features(
        tiny_backbone, TINY_CLASSES, cfg, state["shared_ctx"], state["private_ctx"]
    )
    expected = _training_features("fedpgp", tiny_backbone, cfg, state)
    torch.testing.assert_close(feats.personal, expected.personal)


def test_fedotp_is_scored_with_its_own_fusion(tiny_backbone):
    cfg = parse_run_config(
        {"method.name": "fedotp", "prompt.fusion": "concat", "model.device": "cpu"}
    )
    state = _trained_state("fedotp", tiny_backbone, cfg.prompt)
    feats = class_features(
        tiny_backbone, TINY_CLASSES, cfg, state["shared_ctx"], state["private_ctx"]
    )
    expected = _training_features("fedotp", tiny_backbone, cfg, state)
    torch.testing.assert_close(feats.personal, expected.personal)
