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


def _kept(values: list[float], claims: list[int] | None = None) -> list[Reply]:
    """One reply per value: shared_ctx filled with it (its update norm from zeros is
    value x sqrt(32)) and the given example claim."""
    claims = claims or [10] * len(values)
    return [
        Reply(
            reply(i, None),
            {"shared_ctx": torch.full(SHAPE, v)},
            TrainReply(partition_id=i, num_examples=n, train_loss=0.0),
        )
        for i, (v, n) in enumerate(zip(values, claims, strict=True))
    ]


def _ids(replies: list[Reply]) -> list[int]:
    return [r.partition_id for r in replies]


def test_update_norm_is_the_distance_from_what_was_sent() -> None:
    from server_app.reply_rules import update_norm

    sent = {"a": torch.tensor([1.0, 1.0])}
    assert update_norm({"a": torch.tensor([4.0, 5.0])}, sent) == 5.0  # sqrt(3^2 + 4^2)
    assert update_norm({"a": torch.tensor([4.0, 5.0]), "extra": torch.ones(3)}, sent) == 5.0


def test_norm_ratio_bound_is_ratio_times_the_lower_median() -> None:
    """Norms 1, 2, 2, 5.9 and 6.1 (x sqrt 32): lower median 2, ratio 3 -> bound 6 (x sqrt 32)."""
    rules = ReplyRules({"shared_ctx": SHAPE}, max_norm_ratio=3.0)
    zero = {"shared_ctx": torch.zeros(SHAPE)}
    good, bad = rules.norm_outliers(_kept([1.0, 2.0, 2.0, 5.9, 6.1]), zero)
    assert _ids(good) == [0, 1, 2, 3]
    assert len(bad) == 1 and "server.max-norm-ratio 3 x round median 11.31" in bad[0][1]
    # Two replies are enough to judge by (the lower median is the smaller one).
    good, bad = rules.norm_outliers(_kept([1.0, 3.5]), zero)
    assert _ids(good) == [0] and len(bad) == 1
    # Most clients sent the prompt back unchanged: no scale to judge by, every reply stays.
    good, bad = rules.norm_outliers(_kept([0.0, 0.0, 0.0, 0.5]), zero)
    assert _ids(good) == [0, 1, 2, 3] and bad == []


def test_claims_at_the_limits_are_kept_and_two_replies_are_judged() -> None:
    rules = ReplyRules({"shared_ctx": SHAPE}, max_examples_ratio=5.0)
    good, bad = rules.claim_outliers(_kept([0.1, 0.1], [10, 51]), train=True)
    assert _ids(good) == [0] and "num-examples 51" in bad[0][1]
    good, bad = rules.claim_outliers(_kept([0.1, 0.1], [10, 50]), train=True)  # 50 = 5 x 10
    assert _ids(good) == [0, 1] and bad == []
    rules.expected[True] = {0: 10}
    ok, reason = rules.validate(reply(1, {"shared_ctx": torch.zeros(SHAPE)}, pid=0, n=10), True)
    assert reason is None and ok.num_examples == 10  # exactly what the partition can hold


def test_an_update_exactly_at_the_absolute_cap_is_kept() -> None:
    rules = ReplyRules({"shared_ctx": (2,)}, max_update_norm=5.0)
    sent = {"shared_ctx": torch.zeros(2)}
    kept = [
        Reply(reply(i, None), {"shared_ctx": torch.tensor(v)}, TrainReply(i, 10, 0.0))
        for i, v in enumerate([[3.0, 4.0], [3.0, 4.01]])
    ]
    good, bad = rules.norm_cap(kept, sent)
    assert _ids(good) == [0] and len(bad) == 1 and "> 5 allowed" in bad[0][1]
