"""Hostile or malformed training updates: each is rejected by the server with a log line, counted
in the round's metrics, and never averaged in (issue 8)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from server_app.strategy import SharedPromptFedAvg
from tests.reliability.helpers import rows, run, setup_run
from tests.server_app.test_strategy import SHAPE, reply

SENT = torch.zeros(SHAPE)


def _strategy(**kw) -> SharedPromptFedAvg:
    s = SharedPromptFedAvg({"shared_ctx": SHAPE}, num_partitions=20, **kw)
    s.sent = {"shared_ctx": SENT.clone()}  # what configure_train would have recorded
    return s


def _honest(n: int = 4) -> list[Message]:
    gen = torch.Generator().manual_seed(0)
    return [reply(i + 1, {"shared_ctx": 0.1 * torch.randn(SHAPE, generator=gen)}) for i in range(n)]


def _numpy_reply(node: int, arr: np.ndarray) -> Message:
    msg = reply(node, None)
    msg.content["arrays"] = ArrayRecord({"shared_ctx": Array(arr)})
    return msg


HOSTILE = {
    "absurd norm": lambda: reply(9, {"shared_ctx": torch.full(SHAPE, 1e6)}),
    "norm 50x median": lambda: reply(9, {"shared_ctx": torch.full(SHAPE, 5.0)}),
    "nan": lambda: reply(9, {"shared_ctx": torch.full(SHAPE, float("nan"))}),
    "-inf": lambda: reply(9, {"shared_ctx": torch.full(SHAPE, float("-inf"))}),
    "private tensor": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE), "private": SENT}),
    "wrong key": lambda: reply(9, {"ctx": torch.zeros(SHAPE)}),
    "wrong shape": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE[0], SHAPE[1] + 1)}),
    "transposed": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE[::-1])}),
    "float64": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE, dtype=torch.float64)}),
    "int32": lambda: _numpy_reply(9, np.zeros(SHAPE, dtype=np.int32)),
    "bool": lambda: _numpy_reply(9, np.zeros(SHAPE, dtype=bool)),
    "scalar": lambda: _numpy_reply(9, np.zeros((), dtype=np.float32)),
    "duplicate partition": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE)}, pid=1),
    "partition out of range": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE)}, pid=20),
    "negative partition": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE)}, pid=-1),
    "list examples": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE)}, n=[10**9]),
    "nan examples": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE)}, n=float("nan")),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_reply_rejected_logged_counted(name: str, caplog) -> None:
    s = _strategy(max_norm_ratio=10.0)
    honest = _honest()
    ref, _ = _strategy(max_norm_ratio=10.0).aggregate_train(1, _honest())
    arrays, _ = s.aggregate_train(1, [*honest, HOSTILE[name]()])
    # The average is exactly the honest clients' average: the hostile reply had no influence.
    got = arrays.to_torch_state_dict()["shared_ctx"]
    assert torch.equal(got, ref.to_torch_state_dict()["shared_ctx"])
    assert bool(torch.isfinite(got).all())
    rep = s.train_report
    assert rep.ok == 4 and len(rep.rejected) == 1, rep.rejected
    assert rep.rejected[0]["node"] == 9
    assert any("node 9 rejected" in r.message for r in caplog.records)


def test_norm_bound_is_relative_to_the_round_median() -> None:
    # Large but uniform updates all pass (the bound scales with the round) ...
    big = [reply(i, {"shared_ctx": torch.full(SHAPE, 100.0 + i)}) for i in range(1, 4)]
    s = _strategy(max_norm_ratio=10.0)
    s.aggregate_train(1, big)
    assert s.train_report.ok == 3 and not s.train_report.rejected
    # ... one 10x + epsilon the (lower) median is out, even with only two replies.
    s = _strategy(max_norm_ratio=10.0)
    two = [
        reply(1, {"shared_ctx": torch.full(SHAPE, 1.0)}),
        reply(2, {"shared_ctx": torch.full(SHAPE, 10.01)}),
    ]
    s.aggregate_train(1, two)
    assert [r["node"] for r in s.train_report.rejected] == [2]
    assert "max-norm-ratio" in s.train_report.rejected[0]["reason"]
    # Off (0): nothing is rejected for its norm.
    s = _strategy(max_norm_ratio=0.0)
    s.aggregate_train(1, [*_honest(), HOSTILE["absurd norm"]()])
    assert s.train_report.ok == 5


def test_hostile_evaluate_metrics_are_rejected() -> None:
    s = _strategy()
    good = reply(1, None)
    good.content["metrics"] = MetricRecord(
        {"num-examples": 4, "personalised-accuracy": 0.5, "global-accuracy": 0.5, "partition-id": 1}
    )
    bad = reply(2, None)
    bad.content["metrics"] = MetricRecord(
        {"num-examples": 10**9, "personalised-accuracy": 7.0, "partition-id": 2}
    )
    m = s.aggregate_evaluate(1, [good, bad])
    assert m["personalised-accuracy"] == 0.5
    assert "personalised-accuracy" in s.eval_report.rejected[0]["reason"]


def test_nan_global_accuracy_accepted_only_for_an_empty_global_model() -> None:
    """``local`` has no global model: NaN over 0 examples is honest, NaN over examples is not."""
    s = _strategy()
    empty = reply(1, None)
    empty.content["metrics"] = MetricRecord(
        {"num-examples": 4, "personalised-accuracy": 0.5, "global-accuracy": float("nan"),
         "global-num-examples": 0, "partition-id": 1}
    )  # fmt: skip
    lying = reply(2, None)
    lying.content["metrics"] = MetricRecord(
        {"num-examples": 4, "personalised-accuracy": 0.5, "global-accuracy": float("nan"),
         "global-num-examples": 4, "partition-id": 2}
    )  # fmt: skip
    m = s.aggregate_evaluate(1, [empty, lying])
    assert m["personalised-accuracy"] == 0.5
    assert len(s.eval_report.rejected) == 1
    assert "global-accuracy" in s.eval_report.rejected[0]["reason"]


@pytest.mark.slow
def test_run_survives_hostile_clients(tmp_path: Path, tiny_clip_dir: Path, caplog) -> None:
    """Real ServerApp loop + ClientApps in-process; client 2 turns hostile in every round."""
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 3, "server.eval-every": 3})
    attacks = iter(
        [
            lambda t: {"shared_ctx": t * 1e4},  # absurd norm
            lambda t: {"shared_ctx": t, "private_ctx": t},  # a private tensor rides along
            lambda t: {"shared_ctx": torch.full_like(t, float("nan"))},
        ]
    )

    def tamper(dst: int, msg: Message) -> Message:
        if msg.has_content() and "arrays" in msg.content and dst == grid_nodes[2]:
            t = msg.content["arrays"].to_torch_state_dict()["shared_ctx"]
            msg.content["arrays"] = ArrayRecord(next(attacks)(t))
        return msg

    grid_nodes = [101 + 7 * i for i in range(3)]
    run(cfg, tamper=tamper)
    out = rows(cfg)
    assert [r["round"] for r in out] == [1, 2, 3]
    for r in out:
        assert r["clients_ok"] == 2 and r["replies_rejected"] == 1 and r["clients_failed"] == 0
        assert r["rejected"][0]["partition"] == 2
        assert math.isfinite(r["train_loss"])
    reasons = [r["rejected"][0]["reason"] for r in out]
    assert "max-norm-ratio" in reasons[0] and "private" in reasons[1] and "non-finite" in reasons[2]
    assert sum("rejected" in rec.message for rec in caplog.records) >= 3
