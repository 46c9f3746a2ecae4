"""What makes a client reply acceptable: one reply's checks and a round's outlier rules.

``ReplyRules.validate`` judges one reply on its own (error, metrics through the typed codecs of
protocol.replies, partition id, array keys, shapes, dtypes, finite values; a private tensor is
rejected outright). ``claim_outliers`` and ``norm_outliers`` judge a reply against the round:
an example count or an update distance above a multiple of the round's (lower) median.
SharedPromptFedAvg applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import Message, RecordDict

from protocol.keys import ARRAYS, METRICS, NUM_EXAMPLES
from protocol.messages import from_record
from protocol.replies import EvalReply, ReplyError, TrainReply


@dataclass
class Reply:
    """A reply that passed validation: who sent it, its shared tensors ({} for an evaluation)
    and its typed metrics."""

    msg: Message
    tensors: dict[str, torch.Tensor]
    metrics: TrainReply | EvalReply

    @property
    def node(self) -> int:
        return self.msg.metadata.src_node_id

    @property
    def partition_id(self) -> int:
        return self.metrics.partition_id

    @property
    def num_examples(self) -> int | float:
        return self.metrics.num_examples


def check_shared(
    arrays: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    dtype: torch.dtype,
) -> str | None:
    """Why a client's shared tensors must not be averaged in, or None if they are fine."""
    if set(arrays) != set(expected):
        return f"keys {sorted(arrays)} != expected {sorted(expected)}"
    for key, shape in expected.items():
        t = arrays[key]
        if tuple(t.shape) != tuple(shape):
            return f"{key}: shape {tuple(t.shape)} != {tuple(shape)}"
        if t.dtype != dtype:
            return f"{key}: dtype {t.dtype} != {dtype}"
        if not bool(torch.isfinite(t).all()):
            return f"{key}: non-finite values"
    return None


@dataclass
class ReplyRules:
    """The server's limits on replies; ``expected[train]``: partition -> most honest examples."""

    shared_shapes: dict[str, tuple[int, ...]]
    wire_dtype: torch.dtype = torch.float32
    num_partitions: int | None = None
    max_norm_ratio: float = 0.0
    max_examples_ratio: float = 0.0
    expected: dict[bool, dict[int, int]] = field(default_factory=lambda: {True: {}, False: {}})
    max_update_norm: float = 0.0  # absolute bound on an update's distance; 0 = none

    def validate(
        self, msg: Message, train: bool, content: RecordDict | None = None
    ) -> tuple[Reply | None, str | None]:
        """(the reply, None) when usable, (None, reason) otherwise; ``content``: judge this
        instead of the message's own (a fused reply's evaluation)."""
        if msg.has_error():
            return None, f"error reply: {msg.error.reason}"
        content = msg.content if content is None else content
        record = content.metric_records.get(METRICS)
        if record is None:
            return None, "no metrics record"
        codec = TrainReply if train else EvalReply
        try:
            metrics = codec.from_metrics(record)
        except ReplyError as err:
            return None, str(err)
        pid, n = metrics.partition_id, metrics.num_examples
        if self.num_partitions is not None and pid >= self.num_partitions:
            return None, f"partition-id {pid} out of range (federation of {self.num_partitions})"
        expected = self.expected[train].get(pid)
        if expected is not None and n > expected:
            return None, (
                f"{NUM_EXAMPLES} {n:g} > {expected} that partition {pid} can hold "
                f"({'epochs x its train split' if train else 'its test split'})"
            )
        all_keys = {k for rec in content.array_records.values() for k in rec}
        if any("private" in k for k in all_keys):
            return None, f"carries private tensor(s) {sorted(all_keys)}: rejected"
        if not train:
            if all_keys:
                return None, f"unexpected arrays {sorted(all_keys)}"
            return Reply(msg, {}, metrics), None
        if set(content.array_records) != {ARRAYS}:
            return None, f"array records {sorted(content.array_records)} != ['{ARRAYS}']"
        try:
            tensors = from_record(content.array_records[ARRAYS])
        except Exception as err:  # noqa: BLE001 (a malformed array is a bad reply)
            return None, f"undecodable arrays: {err}"
        reason = check_shared(tensors, self.shared_shapes, self.wire_dtype)
        return (None, reason) if reason else (Reply(msg, tensors, metrics), None)

    def claim_outliers(
        self, kept: list[Reply], train: bool
    ) -> tuple[list[Reply], list[tuple[Message, str]]]:
        """Split off replies whose example count is absurd for this round: above
        ``max_examples_ratio`` x the (lower) median claim, for partitions whose size the server
        does not know (a known size was already checked exactly in validate)."""
        if self.max_examples_ratio <= 0 or len(kept) < 2:
            return kept, []
        claims = [float(r.num_examples) for r in kept]
        median = _lower_median(claims)
        known = self.expected[train]
        return _split_above(
            kept,
            claims,
            self.max_examples_ratio * median,
            lambda n: (
                f"{NUM_EXAMPLES} {n:g} > server.max-examples-ratio "
                f"{self.max_examples_ratio:g} x round median {median:g}"
            ),
            exempt=lambda r: r.partition_id in known,
        )

    def norm_cap(
        self, kept: list[Reply], sent: Mapping[str, torch.Tensor]
    ) -> tuple[list[Reply], list[tuple[Message, str]]]:
        """Split off updates farther from the sent prompt than ``max_update_norm``: holds with
        one reply and when most clients sent the prompt back (where the median rule cannot)."""
        if self.max_update_norm <= 0 or not sent:
            return kept, []
        norms = [update_norm(r.tensors, sent) for r in kept]
        return _split_above(
            kept,
            norms,
            self.max_update_norm,
            lambda norm: f"update norm {norm:.4g} > {self.max_update_norm:.4g} allowed",
        )

    def norm_outliers(
        self, kept: list[Reply], sent: Mapping[str, torch.Tensor]
    ) -> tuple[list[Reply], list[tuple[Message, str]]]:
        """Split off updates whose distance from the sent prompt is absurd for this round."""
        if self.max_norm_ratio <= 0 or not sent or len(kept) < 2:
            return kept, []
        norms = [update_norm(r.tensors, sent) for r in kept]
        median = _lower_median(norms)
        if median <= 0.0:  # most clients sent the prompt back unchanged: no scale to judge by
            return kept, []
        return _split_above(
            kept,
            norms,
            self.max_norm_ratio * median,
            lambda norm: (
                f"update norm {norm:.4g} > server.max-norm-ratio "
                f"{self.max_norm_ratio:g} x round median {median:.4g}"
            ),
        )


def update_norm(tensors: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor]) -> float:
    """L2 distance of a client's shared tensors from the ones the server sent."""
    sq = sum(
        float(((t.float() - sent[k]) ** 2).sum()) if k in sent else 0.0 for k, t in tensors.items()
    )
    return math.sqrt(sq)


def _lower_median(values: list[float]) -> float:
    """The lower median (an actual client's value, so one outlier cannot move it halfway)."""
    return float(torch.tensor(values, dtype=torch.float64).median())


def _split_above(
    kept: list[Reply],
    values: list[float],
    bound: float,
    reason: Callable[[float], str],
    exempt: Callable[[Any], bool] = lambda item: False,
) -> tuple[list[Reply], list[tuple[Message, str]]]:
    """(kept items with value <= bound or exempt, [(message, reason)] for the others)."""
    good, bad = [], []
    for item, value in zip(kept, values, strict=True):
        if value > bound and not exempt(item):
            bad.append((item.msg, reason(value)))
        else:
            good.append(item)
    return good, bad
