"""The global model on the server's side, free of Flower: the round-0 shared state, and its
accuracy on the union of the clients' test splits (``server.global-eval=server``), scored by the
method's own client kind exactly as the clients score it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from task.config import RunConfig
from task.data.source import data_source
from task.local.kinds import client_kind
from task.local.train import EvalResult
from task.methods import get_method
from task.model.backbone import get_backbone


def initial_shared(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The round-0 shared state (the prompt from the phrase's token embeddings; for
    ``fedavg-full`` the whole round-0 model)."""
    method = get_method(cfg.method.name)
    classes = data_source(cfg.data).class_names()
    return method.initial_shared(
        lambda: get_backbone(cfg.model), classes, cfg.prompt, cfg.train.seed
    )


def global_evaluate(
    cfg: RunConfig, shared: Mapping[str, torch.Tensor], on_corrupt: str = "error"
) -> EvalResult:
    """Shared-only accuracy on the global test set (union of the clients' test splits)."""
    method = get_method(cfg.method.name)
    fed = data_source(cfg.data).federation()
    return client_kind(method).score_global(
        cfg, method, get_backbone(cfg.model), fed.class_names, fed.global_test(), shared, on_corrupt
    )
