"""Typed codecs of the two replies a client sends: what a train reply and an evaluate reply carry,
written by the ClientApp with ``to_metrics`` and read by the ServerApp with ``from_metrics``.

``from_metrics`` is where an untrusted MetricRecord becomes typed values: a count must be a
non-bool int or integral float > 0, every number finite, an accuracy in [0, 1] (NaN only where
the model was evaluated on nothing); anything else raises :class:`ReplyError` naming the key,
and the server rejects that reply. ``record_fields`` gives the snake_case names the run's
metrics.jsonl uses, so the kebab -> snake renaming happens here only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.keys import (
    AT_PREFIX,
    GLOBAL_ACCURACY,
    GLOBAL_LOSS,
    GLOBAL_NUM_EXAMPLES,
    NUM_EXAMPLES,
    PARTITION_ID,
    PERSONALISED_ACCURACY,
    PERSONALISED_LOSS,
    PRIVATE_ROUND,
    STEPS,
    TIME_PREFIX,
    TRAIN_LOSS,
    TRAIN_PART_PREFIX,
    ZEROSHOT_ACCURACY,
)


class ReplyError(ValueError):
    """A reply's metrics are malformed: the server rejects the reply (never averages it)."""


def _count(metrics: Mapping[str, Any], key: str, minimum: int = 1) -> int | float:
    """A positive example count (kept as sent: int, or a float that weights the same)."""
    n = metrics.get(key)
    if isinstance(n, bool) or not isinstance(n, int | float) or not n >= minimum:
        raise ReplyError(f"{key} must be a positive number, got {n!r}")
    if not math.isfinite(n):
        raise ReplyError(f"{key} must be finite, got {n!r}")
    return n


def partition_of(metrics: Mapping[str, Any]) -> int:
    pid = metrics.get(PARTITION_ID)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise ReplyError(f"{PARTITION_ID} must be an int >= 0, got {pid!r}")
    return pid


def _timings(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The reply's ``time-*`` and ``at-*`` readings that are finite numbers (others ignored)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith((TIME_PREFIX, AT_PREFIX))
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


def timing_fields(timings: Mapping[str, float], phase: str) -> dict[str, float]:
    """``time-<x>`` as ``<phase>_<x>_s`` and ``at-<x>`` as ``<phase>_at_<x>`` (metrics.jsonl)."""
    out = {}
    for k, v in timings.items():
        if k.startswith(TIME_PREFIX):
            out[f"{phase}_{k[len(TIME_PREFIX) :]}_s"] = v
        elif k.startswith(AT_PREFIX):
            out[f"{phase}_at_{k[len(AT_PREFIX) :]}"] = v
    return out


@dataclass
class TrainReply:
    """A client's training result (its shared tensors travel beside it in ``arrays``)."""

    partition_id: int
    num_examples: int | float
    train_loss: float
    steps: int = 0
    parts: dict[str, float] = field(default_factory=dict)  # mean loss parts (ce, dpa, ot, ...)
    timings: dict[str, float] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            NUM_EXAMPLES: self.num_examples,
            TRAIN_LOSS: self.train_loss,
            STEPS: self.steps,
            PARTITION_ID: self.partition_id,
        }
        metrics.update({f"{TRAIN_PART_PREFIX}{k}": float(v) for k, v in self.parts.items()})
        metrics.update(self.timings)
        return metrics

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> TrainReply:
        n = _count(metrics, NUM_EXAMPLES)
        pid = partition_of(metrics)
        loss = metrics.get(TRAIN_LOSS, float("nan"))
        if isinstance(loss, bool) or not isinstance(loss, int | float):
            raise ReplyError(f"{TRAIN_LOSS} must be a number, got {loss!r}")
        return cls(
            partition_id=pid,
            num_examples=n,
            train_loss=float(loss),
            timings=_timings(metrics),
        )

    def record_fields(self, node: int) -> dict[str, Any]:
        """This client's entry under ``per_client`` in the round's metrics line."""
        return {
            "node": node,
            "num_train": int(self.num_examples),
            "train_loss": self.train_loss,
            **timing_fields(self.timings, "train"),
        }


@dataclass
class EvalReply:
    """A client's evaluation on its own test split (personalised, shared-only, zero-shot)."""

    partition_id: int
    num_examples: int | float
    personalised_accuracy: float
    personalised_loss: float
    global_accuracy: float
    global_loss: float = float("nan")
    global_num_examples: int = 0
    private_round: int = -1
    zeroshot_accuracy: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            NUM_EXAMPLES: self.num_examples,
            PERSONALISED_ACCURACY: self.personalised_accuracy,
            PERSONALISED_LOSS: self.personalised_loss,
            GLOBAL_ACCURACY: self.global_accuracy,
            GLOBAL_LOSS: self.global_loss,
            GLOBAL_NUM_EXAMPLES: self.global_num_examples,
            PARTITION_ID: self.partition_id,
            PRIVATE_ROUND: self.private_round,
        }
        if self.zeroshot_accuracy is not None:
            metrics[ZEROSHOT_ACCURACY] = self.zeroshot_accuracy
        metrics.update(self.timings)
        return metrics

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> EvalReply:
        n = _count(metrics, NUM_EXAMPLES)
        pid = partition_of(metrics)
        zeroshot = None
        if ZEROSHOT_ACCURACY in metrics:
            zeroshot = _accuracy(metrics, ZEROSHOT_ACCURACY, n)  # n > 0: never NaN
        global_n = metrics.get(GLOBAL_NUM_EXAMPLES, 0)
        if isinstance(global_n, bool) or not isinstance(global_n, int) or global_n < 0:
            raise ReplyError(f"{GLOBAL_NUM_EXAMPLES} must be an int >= 0, got {global_n!r}")
        return cls(
            partition_id=pid,
            num_examples=n,
            personalised_accuracy=_accuracy(metrics, PERSONALISED_ACCURACY, n),
            personalised_loss=_loss(metrics, PERSONALISED_LOSS),
            global_accuracy=_accuracy(metrics, GLOBAL_ACCURACY, global_n),
            global_num_examples=global_n,
            zeroshot_accuracy=zeroshot,
            timings=_timings(metrics),
        )

    def record_fields(self, node: int) -> dict[str, Any]:
        return {
            "node": node,
            "num_test": int(self.num_examples),
            "personalised_accuracy": self.personalised_accuracy,
            "global_accuracy": self.global_accuracy,
            **timing_fields(self.timings, "eval"),
        }


def _accuracy(metrics: Mapping[str, Any], key: str, count: Any) -> float:
    """An accuracy in [0, 1]. NaN only with a count of 0: the honest accuracy of a model
    evaluated on nothing (e.g. ``local``'s global one), which weighs nothing in the average."""
    value = metrics.get(key, float("nan") if count == 0 else None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReplyError(f"{key} must be a number in [0, 1], got {value!r}")
    if isinstance(value, float) and math.isnan(value) and count == 0:
        return value
    if not 0.0 <= value <= 1.0:
        raise ReplyError(f"{key} must be in [0, 1], got {value!r}")
    return float(value)


def _loss(metrics: Mapping[str, Any], key: str) -> float:
    """A cross-entropy: >= 0, or NaN where nothing was scored."""
    value = metrics.get(key, float("nan"))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReplyError(f"{key} must be a number, got {value!r}")
    if not (math.isnan(value) or 0.0 <= value < math.inf):
        raise ReplyError(f"{key} must be a finite loss >= 0, got {value!r}")
    return float(value)
