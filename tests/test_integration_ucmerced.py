"""Integration: Fed-UCMerced, 10 clients, rs-tinyclip-aid; personalised beats zero-shot.

Runs the real ServerApp loop and ClientApp handlers in-process (the `flwr run` path is covered
by test_e2e_simulation); uses ../shared, so it skips with a reason where that is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED

MODEL = SHARED / "models" / "rs-tinyclip-aid"
UCM = SHARED / "data" / "ucmerced"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (MODEL.is_dir() and UCM.is_dir()), reason=f"needs {MODEL} and {UCM} (../shared)"
    ),
]


def test_fed_ucmerced_personalised_beats_zeroshot(tmp_path: Path) -> None:
    from client_app.app import app as client_app
    from server_app.loop import run_server
    from task.features import FeatureCache
    from task.federated import get_backbone, get_federation, parse_app_config
    from task.train import evaluate
    from task.zeroshot import zeroshot_features
    from tests.server_app.inprocess import InProcessGrid, task_identity

    cfg = {
        "model.name": str(MODEL),
        "model.device": "cpu",
        "data.dataset": "ucmerced",
        "data.root": str(UCM),
        "data.num-clients": 10,
        "method.name": "fedrsclip",
        "loss.head": "clip",
        "loss.ot-iters": 20,
        "train.optimizer": "adamw",
        "train.lr": 0.01,
        "train.epochs": 3,
        "train.batch-size": 32,
        "server.num-rounds": 3,
        "server.eval-every": 3,
        "server.min-nodes": 10,
        "run.name": "ucm",
        "run.dir": str(tmp_path / "runs"),
        "client.private-dir": str(tmp_path / "private"),
        "cache.dir": str(tmp_path / "features"),
    }
    app_cfg = parse_app_config(cfg)
    core = app_cfg.core
    fed, backbone = get_federation(core.data), get_backbone(core.model)
    feats = FeatureCache(core.cache.dir).load_or_extract(
        backbone, fed.global_test(), False, progress=False
    )
    zs = evaluate(
        zeroshot_features(backbone, fed.class_names),
        feats,
        "clip",
        core.loss,
        backbone.logit_scale,
        personalised=False,
    )
    with task_identity():
        summary = run_server(InProcessGrid(client_app, cfg, 10), cfg)
    assert summary["clients_failed"] == 0 and summary["replies_rejected"] == 0
    print("zero-shot", zs.accuracy, "personalised", summary["final_personalised_accuracy"])
    assert summary["final_personalised_accuracy"] > zs.accuracy, (summary, zs.accuracy)
