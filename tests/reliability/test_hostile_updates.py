"""Hostile or malformed training updates: each is rejected by the server with a log line, counted
in the round's metrics, and never averaged in (issue 8)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
)
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from server_app.phases import _missing
from server_app.strategy import SharedPromptFedAvg
from task.data.source import ExampleLimits, data_source
from testkit.images import TINY_CLASSES
from tests.reliability.helpers import rows, run, setup_run
from tests.server_app.test_strategy import SHAPE, eval_round, reply, train_round

SENT = torch.zeros(SHAPE)


def _strategy(**kw) -> SharedPromptFedAvg:
    return SharedPromptFedAvg({"shared_ctx": SHAPE}, num_partitions=20, **kw)


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
    "inflated examples": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE)}, n=10**9),
    "examples 11x median": lambda: reply(9, {"shared_ctx": torch.zeros(SHAPE)}, n=110),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_reply_rejected_logged_counted(name: str, caplog) -> None:
    s = _strategy(max_norm_ratio=10.0, max_examples_ratio=10.0)
    honest = _honest()
    ref = train_round(_strategy(max_norm_ratio=10.0, max_examples_ratio=10.0), _honest())
    out = train_round(s, [*honest, HOSTILE[name]()])
    # The average is exactly the honest clients' average: the hostile reply had no influence.
    got = out.shared["shared_ctx"]
    assert torch.equal(got, ref.shared["shared_ctx"])
    assert bool(torch.isfinite(got).all())
    rep = out.report
    assert rep.ok == 4 and len(rep.rejected) == 1, rep.rejected
    assert rep.rejected[0]["node"] == 9
    assert any("node 9 rejected" in r.message for r in caplog.records)


def test_norm_bound_is_relative_to_the_round_median() -> None:
    # Large but uniform updates all pass (the bound scales with the round) ...
    big = [reply(i, {"shared_ctx": torch.full(SHAPE, 100.0 + i)}) for i in range(1, 4)]
    s = _strategy(max_norm_ratio=10.0)
    out = train_round(s, big)
    assert out.report.ok == 3 and not out.report.rejected
    # ... one 10x + epsilon the (lower) median is out, even with only two replies.
    s = _strategy(max_norm_ratio=10.0)
    two = [
        reply(1, {"shared_ctx": torch.full(SHAPE, 1.0)}),
        reply(2, {"shared_ctx": torch.full(SHAPE, 10.01)}),
    ]
    out = train_round(s, two)
    assert [r["node"] for r in out.report.rejected] == [2]
    assert "max-norm-ratio" in out.report.rejected[0]["reason"]
    # Off (0): nothing is rejected for its norm.
    s = _strategy(max_norm_ratio=0.0)
    out = train_round(s, [*_honest(), HOSTILE["absurd norm"]()])
    assert out.report.ok == 5


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
    ev = eval_round(s, [good, bad])
    assert ev.fields["personalised_accuracy"] == 0.5
    assert "personalised-accuracy" in ev.report.rejected[0]["reason"]


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
    ev = eval_round(s, [empty, lying])
    assert ev.fields["personalised_accuracy"] == 0.5
    assert len(ev.report.rejected) == 1
    assert "global-accuracy" in ev.report.rejected[0]["reason"]


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


# -- num-examples inflation -------------------------------------------------------------------
def test_inflated_example_count_cannot_dominate_the_average(caplog) -> None:
    """A plausible update with a huge num-examples claim would be ~the whole average; it is
    rejected (logged, counted), and the average is the honest clients' alone."""
    poisoned = torch.full(SHAPE, 0.5)  # small enough to pass the norm bound
    liar = reply(9, {"shared_ctx": poisoned}, n=10**6)
    off = _strategy(max_norm_ratio=10.0, max_examples_ratio=0.0)
    out = train_round(off, [*_honest(), liar])
    dominated = out.shared["shared_ctx"]
    assert torch.allclose(dominated, poisoned, atol=1e-4)  # what the bound is for
    assert out.num_examples == 10**6 + 40

    s = _strategy(max_norm_ratio=10.0, max_examples_ratio=10.0)
    ref = train_round(_strategy(max_norm_ratio=10.0), _honest())
    out = train_round(s, [*_honest(), liar])
    got = out.shared["shared_ctx"]
    assert torch.equal(got, ref.shared["shared_ctx"])
    assert out.num_examples == 40
    rep = out.report
    assert rep.ok == 4 and [r["node"] for r in rep.rejected] == [9]
    assert "server.max-examples-ratio 10 x round median 10" in rep.rejected[0]["reason"]
    assert any("node 9 rejected: num-examples" in r.message for r in caplog.records)


def test_example_bound_is_relative_to_the_round_median() -> None:
    # Exactly 10x the (lower) median passes, above it does not, from two replies on.
    for claim, rejected in ((100, []), (101, [2])):
        s = _strategy(max_examples_ratio=10.0)
        pair = [reply(1, {"shared_ctx": SENT}, n=10), reply(2, {"shared_ctx": SENT}, n=claim)]
        out = train_round(s, pair)
        assert [r["node"] for r in out.report.rejected] == rejected
    # One reply: no scale to judge by.
    s = _strategy(max_examples_ratio=10.0)
    out = train_round(s, [reply(2, {"shared_ctx": SENT}, n=10**9)])
    assert out.report.ok == 1
    # Uniformly large claims all pass.
    s = _strategy(max_examples_ratio=10.0)
    out = train_round(s, [reply(i, {"shared_ctx": SENT}, n=10**6 + i) for i in range(1, 4)])
    assert out.report.ok == 3 and not out.report.rejected


def test_known_partition_sizes_bound_claims_exactly() -> None:
    """Where the server can list the federation, a claim above the partition's size is rejected
    and an honest large partition is never held to the median bound (quantity skew)."""
    expected = {1: 10, 2: 10, 3: 10, 4: 5000}
    s = _strategy(max_examples_ratio=10.0, limits=ExampleLimits(train=expected))
    replies = [reply(i, {"shared_ctx": SENT}, n=10) for i in (1, 2)]
    replies += [reply(3, {"shared_ctx": SENT}, n=11), reply(4, {"shared_ctx": SENT}, n=5000)]
    out = train_round(s, replies)
    rep = out.report
    assert rep.ok == 3 and [r["partition"] for r in rep.rejected] == [3]
    assert "num-examples 11 > 10 that partition 3 can hold" in rep.rejected[0]["reason"]
    assert rep.per_client[4]["num_train"] == 5000


def test_inflated_evaluate_count_cannot_skew_the_accuracy() -> None:
    def evr(node: int, n: int, acc: float) -> Message:
        msg = reply(node, None)
        msg.content["metrics"] = MetricRecord(
            {"num-examples": n, "personalised-accuracy": acc, "global-accuracy": acc,
             "partition-id": node}
        )  # fmt: skip
        return msg

    s = _strategy(max_examples_ratio=10.0)
    ev = eval_round(s, [evr(1, 4, 0.5), evr(2, 4, 0.5), evr(3, 10**6, 1.0)])
    assert ev.fields["personalised_accuracy"] == 0.5
    assert [r["node"] for r in ev.report.rejected] == [3]
    s = _strategy(limits=ExampleLimits(evaluate={1: 4, 2: 4, 3: 4}))
    ev = eval_round(s, [evr(1, 4, 0.5), evr(2, 4, 0.5), evr(3, 5, 1.0)])
    assert (
        ev.fields["personalised_accuracy"] == 0.5
        and "its test split" in ev.report.rejected[0]["reason"]
    )


def test_example_limits_from_the_federation(tmp_path: Path, tiny_clip_dir: Path) -> None:
    from task.config import parse_app_config
    from task.data.source import get_federation

    cfg = setup_run(tmp_path, tiny_clip_dir, **{"train.epochs": 3})
    core = parse_app_config(cfg).core
    fed = get_federation(core.data)
    got = data_source(core.data).example_limits(core.train.epochs)
    assert got.train == {c.client_id: 3 * len(c.train) for c in fed.clients}
    assert got.evaluate == {c.client_id: len(c.test) for c in fed.clients}
    assert sorted(got.train) == [0, 1, 2]
    local = {**cfg, "data.partitioner": "local", "data.root": ""}
    local["data.class-names"] = ",".join(TINY_CLASSES)
    local_core = parse_app_config(local).core
    # The server lists no images: it cannot bound counts by partition.
    assert data_source(local_core.data).example_limits(3) == ExampleLimits()


@pytest.mark.slow
def test_run_rejects_an_inflated_claim(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """Through the real loop: the partition sizes it passes bound client 2's inflated claim."""
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 1})
    target = 101 + 7 * 2  # InProcessGrid's node id of partition 2

    def inflate(dst: int, msg: Message) -> Message:
        if dst == target and msg.has_content() and "arrays" in msg.content:
            metrics = dict(msg.content["metrics"])
            metrics["num-examples"] = 10**6
            msg.content["metrics"] = MetricRecord(metrics)
        return msg

    run(cfg, tamper=inflate)
    (r,) = rows(cfg)
    assert r["clients_ok"] == 2 and r["replies_rejected"] == 1
    assert r["rejected"][0]["partition"] == 2
    assert "that partition 2 can hold (epochs x its train split)" in r["rejected"][0]["reason"]


# -- a node that vanished ---------------------------------------------------------------------
def test_superlink_error_for_a_vanished_node_is_counted_once(caplog) -> None:
    """When a node stops heartbeating, the SuperLink answers for it with a NODE_UNAVAILABLE error
    (src = the SuperLink). The strategy logs it without counting; the loop counts the node as
    missing: one failure, not two, and no bogus per-client entry for the SuperLink."""
    s = _strategy()
    sent = [reply(n, None) for n in (11, 12, 13)]  # stand-ins for the pushed train messages
    for msg in sent:
        msg.metadata.__dict__["_dst_node_id"] = msg.metadata.src_node_id
        msg.metadata.__dict__["_message_id"] = f"ins-{msg.metadata.src_node_id}"
    gen = torch.Generator().manual_seed(0)
    ok = [
        reply(n, {"shared_ctx": 0.1 * torch.randn(SHAPE, generator=gen)}, pid=n - 11)
        for n in (11, 12)
    ]
    link = Message(
        error=Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Error: Node Unavailable"),
        metadata=Metadata(
            run_id=1, message_id="", src_node_id=SUPERLINK_NODE_ID,
            dst_node_id=SUPERLINK_NODE_ID, reply_to_message_id="ins-13", group_id="1",
            created_at=0.0, ttl=DEFAULT_TTL, message_type=MessageType.TRAIN,
        ),
    )  # fmt: skip
    replies = [*ok, link]
    missing = _missing(sent, replies, 2, "train")
    out = train_round(s, replies, sent)
    rep = out.report
    assert (rep.ok, rep.failed + missing, rep.rejected) == (2, 1, [])
    assert SUPERLINK_NODE_ID not in rep.bytes_from
    assert any("node 13 failed: the SuperLink answered" in r.message for r in caplog.records)
    assert any("no reply from node(s) [13]" in r.message for r in caplog.records)


# -- robust aggregation ------------------------------------------------------------------------
@pytest.mark.slow
def test_median_aggregation_keeps_a_poisoner_out_of_the_global_prompt(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    """The real loop with server.aggregation set: one client of five adds +50 to every entry of
    its (screened and accepted: no norm rule) update. Under FedAvg that moves the global prompt
    by about 10; under the median the global prompt stays where the honest clients put it."""
    from safetensors.torch import load_file

    def global_after(rule: str) -> torch.Tensor:
        cfg = setup_run(
            tmp_path / rule,
            tiny_clip_dir,
            num_clients=5,
            **{
                "server.num-rounds": 1,
                "server.min-nodes": 5,
                "server.max-norm-ratio": 0.0,
                "server.aggregation": rule,
                "data.partitioner": "even",
            },
        )
        nodes = [101 + 7 * i for i in range(5)]

        def tamper(dst: int, msg: Message) -> Message:
            if msg.has_content() and "arrays" in msg.content and dst == nodes[4]:
                t = msg.content["arrays"].to_torch_state_dict()["shared_ctx"]
                msg.content["arrays"] = ArrayRecord({"shared_ctx": t + 50.0})
            return msg

        run(cfg, tamper=tamper)
        assert rows(cfg)[0]["clients_ok"] == 5
        ckpt = Path(cfg["run.dir"]) / cfg["run.name"] / "checkpoints" / "global-r00001.safetensors"
        return load_file(str(ckpt))["shared_ctx"]

    fedavg, median = global_after("fedavg"), global_after("median")
    shift = (fedavg - median).abs()
    assert float(shift.min()) > 5.0  # FedAvg took a fifth of the +50
    assert float(median.abs().max()) < 5.0  # the median stayed with the honest clients
