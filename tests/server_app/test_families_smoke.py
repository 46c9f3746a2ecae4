"""Every method end to end on the non-CLIP families: 2 rounds, 3 clients, real apps in-process.

CI-sized form of "every method runs on rs-lit-b0-minilm": a tiny random VisionTextDualEncoder
with the same tower kinds (timm CNN + BERT), and a tiny random SigLIP for the prompt methods.
The full stand-in runs in tests/test_integration_ucmerced.py (needs ../shared).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from task.methods import METHODS
from testkit.models import save_tiny_siglip
from tests.reliability.helpers import rows, run, setup_run

pytestmark = pytest.mark.slow


def _check_run(cfg: dict, method: str, width: int) -> None:
    metrics = rows(cfg)
    assert [r["round"] for r in metrics] == [1, 2]
    last = metrics[-1]
    assert last["clients_failed"] == 0, last
    assert math.isfinite(last["personalised_accuracy"]), last
    run_dir = Path(cfg["run.dir"]) / cfg["run.name"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_round"] == 2 and summary["replies_rejected"] == 0
    spec = METHODS[method]
    if spec.trains and spec.has_shared and spec.uses_cached_features:
        shared = load_file(str(run_dir / "checkpoints" / "global-r00002.safetensors"))
        assert shared["shared_ctx"].shape[-1] == width  # prompt width = the text tower's


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_tiny_dual_encoder(tmp_path, tiny_dual_encoder_dir, method):
    overrides = {"method.name": method, "data.partitioner": "even"}
    if method == "fedavg-full":
        overrides |= {"train.optimizer": "adamw", "train.lr": 1e-3, "train.batch-size": 4}
    cfg = setup_run(tmp_path, tiny_dual_encoder_dir, **overrides)
    run(cfg)
    _check_run(cfg, method, width=32)


@pytest.mark.parametrize("method", ["promptfl", "fedrsclip", "fedpgp"])
def test_prompt_methods_on_tiny_siglip(tmp_path, method):
    model = save_tiny_siglip(tmp_path / "siglip")
    cfg = setup_run(tmp_path, model, **{"method.name": method, "data.partitioner": "even"})
    run(cfg)
    _check_run(cfg, method, width=32)
