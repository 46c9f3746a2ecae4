"""The server as an attacker would test it (issue 25): replies that used to crash the ServerApp,
a node claiming another node's partition, updates the median rule cannot see, and a fuzz of the
reply screening (the server never raises and never lets a bad reply into the average)."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord
from hypothesis import HealthCheck, given, settings

from server_app.bindings import PartitionBindings
from server_app.strategy import SharedPromptFedAvg
from tests.server_app.test_strategy import SHAPE, eval_round, reply, train_round

GOOD = {"shared_ctx": torch.full(SHAPE, 0.1)}


def _honest(n: int = 3) -> list:
    g = torch.Generator().manual_seed(0)
    return [reply(i + 1, {"shared_ctx": 0.1 * torch.randn(SHAPE, generator=g)}) for i in range(n)]


@pytest.mark.parametrize(
    "metrics",
    [
        {"num-examples": math.inf},  # used to raise OverflowError at int(...) in the strategy
        {"num-examples": [10]},
        {"train-loss": [1.0]},  # used to raise TypeError in weighted_mean
        {"partition-id": 1.5},
        {"partition-id": [1]},
        {"num-examples": float("nan")},
    ],
)
def test_replies_that_crashed_the_server_are_rejected(metrics: dict) -> None:
    bad = reply(9, dict(GOOD))
    bad.content["metrics"] = MetricRecord({**dict(bad.content["metrics"]), **metrics})
    out = train_round(SharedPromptFedAvg({"shared_ctx": SHAPE}), [*_honest(), bad])
    assert out.report.ok == 3 and [r["node"] for r in out.report.rejected] == [9]
    ref = train_round(SharedPromptFedAvg({"shared_ctx": SHAPE}), _honest())
    assert torch.equal(out.shared["shared_ctx"], ref.shared["shared_ctx"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("zeroshot-accuracy", 1e9),  # was accepted unchecked
        ("personalised-loss", -1e300),  # was accepted
        ("personalised-accuracy", [0.5]),
        ("global-num-examples", -3),
    ],
)
def test_evaluation_metrics_out_of_range_are_rejected(key: str, value: object) -> None:
    def ev(node: int, **extra: object):
        msg = reply(node, None)
        metrics = {"num-examples": 4, "personalised-accuracy": 0.5, "global-accuracy": 0.5,
                   "partition-id": node, **extra}  # fmt: skip
        msg.content["metrics"] = MetricRecord(metrics)
        return msg

    out = eval_round(SharedPromptFedAvg({"shared_ctx": SHAPE}), [ev(1), ev(2, **{key: value})])
    assert [r["node"] for r in out.report.rejected] == [2] and key in out.report.rejected[0][
        "reason"
    ]
    assert out.fields["personalised_accuracy"] == 0.5


def test_a_node_claiming_another_nodes_partition_is_refused(tmp_path) -> None:
    """Node 9 reports as partition 1: once node 1 holds it, node 9 is refused every round, and
    node 1's updates are never refused as duplicates (the attack the binding stops)."""
    bindings = PartitionBindings(tmp_path)
    s = SharedPromptFedAvg({"shared_ctx": SHAPE}, bindings=bindings)
    honest = reply(1, dict(GOOD), pid=1)
    sent = [reply(n, None) for n in (1, 9)]
    for m in sent:
        m.metadata.__dict__["_dst_node_id"] = m.metadata.src_node_id
    out = train_round(s, [honest], sent)
    assert out.report.ok == 1  # round 1: node 1 is first seen with partition 1
    for _ in range(2):
        out = train_round(s, [reply(9, dict(GOOD), pid=1), reply(1, dict(GOOD), pid=1)], sent)
        assert out.report.ok == 1
        assert [r["node"] for r in out.report.rejected] == [9]
        assert "bound to node 1" in out.report.rejected[0]["reason"]
    # The binding survives a restart of the ServerApp (the run directory keeps it) ...
    again = PartitionBindings(tmp_path)
    assert again.node_of == {1: 1}
    # ... and a partition whose node is gone (no message went to it) passes to its new node.
    assert again.check(1, 44, active={44}) is None and again.node_of == {1: 44}
    # A federation of all-new node ids (a restarted simulation) binds afresh.
    again.adopt([100, 101])
    assert again.node_of == {}


def test_absolute_norm_cap_holds_where_the_median_rule_cannot() -> None:
    huge = reply(1, {"shared_ctx": torch.full(SHAPE, 50.0)})
    median_only = SharedPromptFedAvg({"shared_ctx": SHAPE}, max_norm_ratio=10.0)
    assert train_round(median_only, [huge]).report.ok == 1  # one reply: no median to judge by
    capped = SharedPromptFedAvg({"shared_ctx": SHAPE}, max_norm_ratio=10.0, max_update_norm=5.0)
    out = train_round(capped, [huge])
    assert out.report.ok == 0 and "> 5 allowed" in out.report.rejected[0]["reason"]
    assert out.shared is None


def test_client_side_dp_bounds_every_update_by_the_clipping_norm() -> None:
    from task.config import parse_app_config

    cfg = parse_app_config({"server.dp": "client", "server.dp-clipping-norm": 0.5})
    assert cfg.server.update_norm_cap == pytest.approx(0.5, rel=1e-3)
    s = SharedPromptFedAvg({"shared_ctx": SHAPE}, max_update_norm=cfg.server.update_norm_cap)
    unclipped = reply(2, {"shared_ctx": torch.full(SHAPE, 1.0)})  # norm sqrt(32) > 0.5
    out = train_round(s, [reply(1, {"shared_ctx": torch.full(SHAPE, 0.01)}), unclipped])
    assert [r["node"] for r in out.report.rejected] == [2]


def test_an_exception_while_screening_rejects_that_reply_only(monkeypatch) -> None:
    s = SharedPromptFedAvg({"shared_ctx": SHAPE})
    original = s.rules.validate

    def flaky(msg, train, content=None):
        if msg.metadata.src_node_id == 2:
            raise RuntimeError("boom")
        return original(msg, train, content)

    monkeypatch.setattr(s.rules, "validate", flaky)
    out = train_round(s, _honest())
    assert out.report.ok == 2 and "could not be screened: RuntimeError: boom" in str(
        out.report.rejected
    )


# -- fuzz ---------------------------------------------------------------------------------------
# What a MetricRecord can carry (Flower refuses other types before anything is sent).
NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=2),
    st.lists(st.integers(-(2**31), 2**31), max_size=2),
    st.none(),  # the key left out
)
KEYS = ["num-examples", "train-loss", "partition-id", "personalised-accuracy", "global-accuracy"]
ARRAYS = st.one_of(
    st.just("good"),
    st.just("missing"),
    st.sampled_from(["nan", "inf", "huge", "float64", "int32", "shape", "extra", "private"]),
)


def _fuzz_reply(node: int, metrics: dict, arrays: str):
    msg = reply(node, dict(GOOD), pid=node)
    merged = {**dict(msg.content["metrics"]), **metrics}
    msg.content["metrics"] = MetricRecord({k: v for k, v in merged.items() if v is not None})
    base = np.full(SHAPE, 0.1, dtype=np.float32)
    variants = {
        "nan": {"shared_ctx": base * np.nan},
        "inf": {"shared_ctx": base * np.inf},
        "huge": {"shared_ctx": base * 1e30},
        "float64": {"shared_ctx": base.astype(np.float64)},
        "int32": {"shared_ctx": base.astype(np.int32)},
        "shape": {"shared_ctx": base[:-1]},
        "extra": {"shared_ctx": base, "other": base},
        "private": {"shared_ctx": base, "private_ctx": base},
    }
    if arrays == "missing":
        del msg.content["arrays"]
    elif arrays in variants:
        msg.content["arrays"] = ArrayRecord({k: Array(v) for k, v in variants[arrays].items()})
    return msg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.dictionaries(st.sampled_from(KEYS), NUMBERS, max_size=4), ARRAYS),
        min_size=1,
        max_size=4,
    )
)
def test_fuzzed_replies_never_crash_the_server_nor_enter_the_average(cases) -> None:
    """Random metric records and tensors (types, shapes, NaN/inf, huge values, lists, missing
    keys) beside an honest majority: screening never raises; whatever is kept is well formed,
    finite and within the partition bounds, so the average stays finite and near the honest
    one. (A hostile majority defeats any median rule: server.max-update-norm bounds it.)"""
    s = SharedPromptFedAvg(
        {"shared_ctx": SHAPE}, max_norm_ratio=10.0, max_examples_ratio=10.0, num_partitions=20
    )
    honest = [reply(i, dict(GOOD), pid=i) for i in range(1, 6)]
    fuzzed = [_fuzz_reply(10 + i, m, a) for i, (m, a) in enumerate(cases)]
    out = train_round(s, [*honest, *fuzzed])
    assert out.report.ok + len(out.report.rejected) == len(honest) + len(fuzzed)
    assert out.shared is not None and bool(torch.isfinite(out.shared["shared_ctx"]).all())
    assert float(out.shared["shared_ctx"].abs().max()) < 1e6
    assert math.isfinite(out.train_loss) or math.isnan(out.train_loss)
    for r in out.kept:
        assert isinstance(r.partition_id, int) and 0 <= r.partition_id < 20
        assert math.isfinite(r.num_examples) and r.num_examples > 0
    ev = eval_round(s, [*honest, *fuzzed])  # the same records as evaluations: no crash either
    assert ev.report.ok + len(ev.report.rejected) == len(honest) + len(fuzzed)
