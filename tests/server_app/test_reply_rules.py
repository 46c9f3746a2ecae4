"""The reply rules on their own, without a strategy: one reply's checks and the round's outliers."""

from __future__ import annotations

import torch

from protocol.replies import TrainReply
from server_app.reply_rules import Reply, ReplyRules
from tests.server_app.test_strategy import SHAPE, reply


def test_one_reply_checks() -> None:
    rules = ReplyRules({"shared_ctx": SHAPE}, num_partitions=4)
    ok, reason = rules.validate(reply(1, {"shared_ctx": torch.zeros(SHAPE)}), train=True)
    assert reason is None and set(ok.tensors) == {"shared_ctx"}
    assert (ok.partition_id, ok.num_examples, ok.metrics.train_loss) == (1, 10, 1.0)
    leak = {"shared_ctx": torch.zeros(SHAPE), "private": torch.zeros(SHAPE)}
    _, reason = rules.validate(reply(1, leak), train=True)
    assert "private" in reason
    _, reason = rules.validate(reply(1, {"shared_ctx": torch.zeros(SHAPE)}, pid=4), train=True)
    assert "out of range" in reason
    rules.expected[True] = {0: 10}
    _, reason = rules.validate(reply(1, {"shared_ctx": torch.zeros(SHAPE)}, pid=0, n=11), True)
    assert "can hold" in reason


def test_round_outliers_are_judged_against_the_lower_median() -> None:
    rules = ReplyRules({"shared_ctx": SHAPE}, max_norm_ratio=10.0, max_examples_ratio=10.0)
    sent = {"shared_ctx": torch.zeros(SHAPE)}
    values = [(0.1, 10), (0.1, 10), (0.2, 12), (5.0, 500)]  # (update value, example claim)
    kept = []
    for i, (v, n) in enumerate(values):
        metrics = TrainReply(partition_id=i, num_examples=n, train_loss=0.0)
        kept.append(Reply(reply(i, None), {"shared_ctx": torch.full(SHAPE, v)}, metrics))
    good, bad = rules.norm_outliers(kept, sent)
    assert len(good) == 3 and len(bad) == 1 and "update norm" in bad[0][1]
    good, bad = rules.claim_outliers(kept, train=True)
    assert len(good) == 3 and "num-examples 500" in bad[0][1]
    assert rules.norm_outliers(kept, {}) == (kept, [])  # nothing sent: nothing to judge by
