"""The global model on the server's side, free of Flower: the round-0 shared state, and its
accuracy on the union of the clients' test splits (``server.global-eval=server``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from task.config import RunConfig
from task.data_source import data_source
from task.features import FeatureCache
from task.full_finetune import evaluate_full, initial_state, load_full_model
from task.learner import build_learner, load_prompts
from task.methods import get_method
from task.runtime import get_backbone
from task.train import EvalResult, evaluate, prompt_features
from task.zeroshot import zeroshot_features


def initial_shared(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The round-0 shared prompt, built from the backbone (phrase token embeddings); for
    ``fedavg-full`` the whole round-0 model (image encoder + zero-shot-initialised head)."""
    method = get_method(cfg.method.name)
    classes = data_source(cfg.data).class_names()
    if method.full_finetune:
        return initial_state(get_backbone(cfg.model), classes)
    if not method.shared_keys:
        return {}
    learner = build_learner(
        method, get_backbone(cfg.model), classes, cfg.prompt, seed=cfg.train.seed, personal=False
    )
    state = learner.state_dict()
    return {k: state[k].detach().cpu().float().clone() for k in method.shared_keys}


def global_evaluate(
    cfg: RunConfig, shared: Mapping[str, torch.Tensor], on_corrupt: str = "error"
) -> EvalResult:
    """Shared-only accuracy on the global test set (union of the clients' test splits)."""
    method = get_method(cfg.method.name)
    backbone = get_backbone(cfg.model)
    fed = data_source(cfg.data).federation()
    if method.full_finetune:  # the encoder is not frozen: scored on images, no feature cache
        model = load_full_model(backbone, fed.class_names, shared)
        return evaluate_full(
            model, backbone, fed.global_test(), cfg.train.batch_size, cfg.data.skip_corrupt
        )
    feats = FeatureCache(cfg.cache.dir, on_corrupt=on_corrupt).load_or_extract(
        backbone,
        fed.global_test(),
        method.needs_patches(cfg.loss),
        skip_corrupt=cfg.data.skip_corrupt,
        progress=False,
        desc="global test features",
    )
    if not method.trains:
        text = zeroshot_features(backbone, fed.class_names)
    elif not method.has_shared:  # `local`: there is no global model to score
        n = len(fed.class_names)
        return EvalResult(float("nan"), float("nan"), 0, [float("nan")] * n)
    else:
        learner = build_learner(method, backbone, fed.class_names, cfg.prompt, personal=False)
        load_prompts(learner, {k: v.float() for k, v in shared.items()})
        text = prompt_features(learner)
    head = method.head_for(cfg.loss)
    return evaluate(text, feats, head, cfg.loss, backbone.logit_scale, personalised=False)
