"""A complete flat run config for the tiny CLIP on synthetic images (all paths under one dir)."""

from __future__ import annotations

from typing import Any

# The tiny CLIP's training settings: quick on 2 CPU cores (tests, benches, the compose demo).
TINY_SETTINGS: dict[str, Any] = {
    "model.device": "cpu",
    "method.name": "fedrsclip",
    "loss.ot-iters": 20,
    "train.epochs": 1,
    "train.batch-size": 8,
    "train.lr": 0.01,
    "data.partitioner": "dirichlet",
    "data.alpha": 0.3,
    "data.min-client-size": 6,
    "data.test-fraction": 0.25,
    "server.num-rounds": 2,
}


def tiny_run_config(
    tmp: Any, model_dir: Any, image_root: Any, num_clients: int = 3, **overrides: Any
) -> dict[str, Any]:
    """A complete flat run config for the tiny CLIP on synthetic images, all paths under tmp."""
    cfg: dict[str, Any] = {
        **TINY_SETTINGS,
        "model.name": str(model_dir),
        "cache.dir": str(tmp / "features"),
        "data.dataset": "imagefolder",
        "data.root": str(image_root),
        "data.num-clients": num_clients,
        "server.min-nodes": num_clients,
        "run.name": "tiny",
        "run.dir": str(tmp / "runs"),
        "client.private-dir": str(tmp / "private"),
    }
    cfg.update(overrides)
    return cfg
