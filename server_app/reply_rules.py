"""What makes a client reply acceptable: one reply's checks and a round's outlier rules.

``ReplyRules.validate`` judges one reply on its own (error, example count, partition id, array
keys, shapes, dtypes, finite values, metric ranges; a private tensor is rejected outright).
``claim_outliers`` and ``norm_outliers`` judge a reply against the round: an example count or an
update distance above a multiple of the round's (lower) median. SharedPromptFedAvg applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import Message, RecordDict

from protocol.messages import ARRAYS, METRICS, from_record
from server_app.aggregate import check_shared

NUM_EXAMPLES = "num-examples"


@dataclass
class ReplyRules:
    """The server's limits on replies; ``expected[train]``: partition -> most honest examples."""

    shared_shapes: dict[str, tuple[int, ...]]
    wire_dtype: torch.dtype = torch.float32
    num_partitions: int | None = None
    max_norm_ratio: float = 0.0
    max_examples_ratio: float = 0.0
    expected: dict[bool, dict[int, int]] = field(default_factory=lambda: {True: {}, False: {}})

    def validate(
        self, msg: Message, train: bool, content: RecordDict | None = None
    ) -> tuple[dict | None, str | None]:
        """(shared tensors or {}, None) for a usable reply, (None, reason) otherwise;
        ``content``: judge this instead of the message's own (a fused reply's evaluation)."""
        if msg.has_error():
            return None, f"error reply: {msg.error.reason}"
        content = msg.content if content is None else content
        metrics = content.metric_records.get(METRICS)
        if metrics is None:
            return None, "no metrics record"
        n = metrics.get(NUM_EXAMPLES)
        if not isinstance(n, int | float) or isinstance(n, bool) or not n > 0:
            return None, f"{NUM_EXAMPLES} must be a positive number, got {n!r}"
        pid = metrics.get("partition-id")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            return None, f"partition-id must be an int >= 0, got {pid!r}"
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
            for key in ("personalised-accuracy", "global-accuracy"):
                v = metrics.get(key)
                if v is None or _no_examples(metrics, key, v):
                    continue
                if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                    return None, f"{key} must be in [0, 1], got {v!r}"
            return {}, None
        if set(content.array_records) != {ARRAYS}:
            return None, f"array records {sorted(content.array_records)} != ['{ARRAYS}']"
        try:
            tensors = from_record(content.array_records[ARRAYS])
        except Exception as err:  # noqa: BLE001 (a malformed array is a bad reply)
            return None, f"undecodable arrays: {err}"
        reason = check_shared(tensors, self.shared_shapes, self.wire_dtype)
        return (None, reason) if reason else (tensors, None)

    def claim_outliers(self, kept: list, train: bool) -> tuple[list, list[tuple[Message, str]]]:
        """Split off replies whose example count is absurd for this round: above
        ``max_examples_ratio`` x the (lower) median claim, for partitions whose size the server
        does not know (a known size was already checked exactly in validate_reply)."""
        if self.max_examples_ratio <= 0 or len(kept) < 2:
            return kept, []
        claims = [float(m[NUM_EXAMPLES]) for _, _, m in kept]
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
            exempt=lambda item: item[2]["partition-id"] in known,
        )

    def norm_outliers(
        self, kept: list, sent: Mapping[str, torch.Tensor]
    ) -> tuple[list, list[tuple[Message, str]]]:
        """Split off updates whose distance from the sent prompt is absurd for this round."""
        if self.max_norm_ratio <= 0 or not sent or len(kept) < 2:
            return kept, []
        norms = []
        for _, tensors, _ in kept:
            sq = sum(
                float(((t.float() - sent[k]) ** 2).sum()) if k in sent else 0.0
                for k, t in tensors.items()
            )
            norms.append(math.sqrt(sq))
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


def _lower_median(values: list[float]) -> float:
    """The lower median (an actual client's value, so one outlier cannot move it halfway)."""
    return float(torch.tensor(values, dtype=torch.float64).median())


def _split_above(
    kept: list,
    values: list[float],
    bound: float,
    reason: Callable[[float], str],
    exempt: Callable[[Any], bool] = lambda item: False,
) -> tuple[list, list[tuple[Message, str]]]:
    """(kept items with value <= bound or exempt, [(message, reason)] for the others)."""
    good, bad = [], []
    for item, value in zip(kept, values, strict=True):
        if value > bound and not exempt(item):
            bad.append((item[0], reason(value)))
        else:
            good.append(item)
    return good, bad


def _no_examples(metrics: Mapping[str, Any], key: str, value: Any) -> bool:
    """NaN is the honest accuracy of a model evaluated on nothing (e.g. ``local``'s global one)."""
    count = metrics.get(key.replace("accuracy", "num-examples"))
    return isinstance(value, float) and math.isnan(value) and count == 0
