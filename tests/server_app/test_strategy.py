"""SharedPromptFedAvg: example-weighted averaging and validation of every reply."""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import (
    DEFAULT_TTL,
    ArrayRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from server_app.aggregate import weighted_average
from server_app.reply_rules import check_shared
from server_app.strategy import EvaluationOutcome, SharedPromptFedAvg, TrainOutcome

SHAPE = (4, 8)


def reply(node: int, arrays: dict | None, n: int | float | None = 10, pid: int | None = None):
    """A train reply as a client would send it (metadata built by hand: no run here)."""
    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="1",
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    metrics = {"partition-id": node if pid is None else pid, "train-loss": float(node)}
    if n is not None:
        metrics["num-examples"] = n
    content["metrics"] = MetricRecord(metrics)
    return Message(content=content, metadata=meta)


def error_reply(node: int) -> Message:
    ok = reply(node, None)
    return Message(error=Error(code=1, reason="boom"), metadata=ok.metadata)


def strategy(fp16: bool = False) -> SharedPromptFedAvg:
    return SharedPromptFedAvg({"shared_ctx": SHAPE}, fp16_transport=fp16)


def train_round(
    s: SharedPromptFedAvg, replies: list[Message], sent_messages: list[Message] | None = None
) -> TrainOutcome:
    """One training phase's outcome, the prompt sent being zeros."""
    return s.train_outcome(
        1, list(replies), sent_messages or [], {"shared_ctx": torch.zeros(SHAPE)}
    )


def eval_round(s: SharedPromptFedAvg, replies: list[Message]) -> EvaluationOutcome:
    return s.evaluation_outcome(list(replies), [])


def test_average_is_weighted_by_example_counts() -> None:
    s = strategy()
    replies = [
        reply(1, {"shared_ctx": torch.full(SHAPE, 1.0)}, n=1),
        reply(2, {"shared_ctx": torch.full(SHAPE, 4.0)}, n=3),
    ]
    out = train_round(s, replies)
    avg = out.shared["shared_ctx"]
    assert avg.dtype == torch.float32
    assert torch.allclose(avg, torch.full(SHAPE, 3.25))
    assert out.num_examples == 4
    assert out.train_loss == pytest.approx((1 * 1 + 2 * 3) / 4)
    assert out.report.ok == 2 and not out.report.rejected


def test_result_does_not_depend_on_arrival_order() -> None:
    tensors = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    replies = [reply(i + 1, {"shared_ctx": t}, n=i + 2) for i, t in enumerate(tensors)]
    a = train_round(strategy(), replies)
    b = train_round(strategy(), list(reversed(replies)))
    assert torch.equal(a.shared["shared_ctx"], b.shared["shared_ctx"])


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (reply(9, {"shared_ctx": torch.ones(SHAPE), "private_ctx": torch.ones(SHAPE)}), "private"),
        (reply(9, {"private_ctx": torch.ones(SHAPE)}), "private"),
        (reply(9, {"shared_ctx": torch.ones(3, 8)}), "shape"),
        (reply(9, {"shared_ctx": torch.ones(SHAPE, dtype=torch.float16)}), "dtype"),
        (reply(9, {"shared_ctx": torch.full(SHAPE, float("nan"))}), "non-finite"),
        (reply(9, {"shared_ctx": torch.full(SHAPE, float("inf"))}), "non-finite"),
        (reply(9, {"shared_ctx": torch.ones(SHAPE), "extra": torch.ones(2)}), "keys"),
        (reply(9, {}), "keys"),
        (reply(9, {"shared_ctx": torch.ones(SHAPE)}, n=None), "num-examples"),
        (reply(9, {"shared_ctx": torch.ones(SHAPE)}, n=0), "num-examples"),
        (reply(9, {"shared_ctx": torch.ones(SHAPE)}, n=-5), "num-examples"),
    ],
)
def test_bad_reply_is_dropped_logged_and_counted(bad: Message, why: str, caplog) -> None:
    s = strategy()
    good = reply(1, {"shared_ctx": torch.full(SHAPE, 2.0)}, n=5)
    out = train_round(s, [good, bad])
    assert torch.equal(out.shared["shared_ctx"], torch.full(SHAPE, 2.0))
    assert out.report.ok == 1
    assert len(out.report.rejected) == 1
    assert why in out.report.rejected[0]["reason"]
    assert out.report.rejected[0]["partition"] == 9
    assert any("rejected" in r.message for r in caplog.records)


def test_error_replies_count_as_failed_and_all_bad_gives_nothing() -> None:
    s = strategy()
    bad = reply(2, {"shared_ctx": torch.full(SHAPE, float("nan"))})
    out = train_round(s, [error_reply(1), bad])
    assert out.shared is None and out.train_loss is None
    assert out.report.failed == 1 and len(out.report.rejected) == 1


def test_fp16_transport_expects_half_precision_and_averages_in_fp32() -> None:
    s = strategy(fp16=True)
    half = reply(1, {"shared_ctx": torch.full(SHAPE, 0.5, dtype=torch.float16)})
    full = reply(2, {"shared_ctx": torch.full(SHAPE, 0.5)})
    out = train_round(s, [half, full])
    assert out.shared["shared_ctx"].dtype == torch.float32
    assert out.report.ok == 1 and "dtype" in out.report.rejected[0]["reason"]


def test_evaluate_replies_with_arrays_are_rejected() -> None:
    s = strategy()
    r = reply(3, {"private_ctx": torch.ones(SHAPE)})
    r.content["metrics"] = MetricRecord(
        {"num-examples": 4, "personalised-accuracy": 1.0, "global-accuracy": 0.5, "partition-id": 3}
    )
    ev = eval_round(s, [r])
    assert ev.fields is None
    assert "private" in ev.report.rejected[0]["reason"]


def test_evaluate_is_weighted_by_test_size() -> None:
    s = strategy()
    replies = []
    for node, (acc, n) in enumerate([(1.0, 1), (0.0, 3)], start=1):
        r = reply(node, None)
        r.content["metrics"] = MetricRecord(
            {
                "num-examples": n,
                "personalised-accuracy": acc,
                "global-accuracy": acc / 2,
                "personalised-loss": 1.0,
                "partition-id": node,
            }
        )
        replies.append(r)
    ev = eval_round(s, replies)
    assert ev.fields["personalised_accuracy"] == pytest.approx(0.25)
    assert ev.fields["global_accuracy"] == pytest.approx(0.125)
    assert ev.report.per_client[1]["personalised_accuracy"] == 1.0


def test_check_shared_and_weighted_average_units() -> None:
    ok = {"shared_ctx": torch.zeros(SHAPE)}
    assert check_shared(ok, {"shared_ctx": SHAPE}, torch.float32) is None
    with pytest.raises(ValueError):
        weighted_average([(ok, 0)])
    with pytest.raises(ValueError):
        weighted_average([])
