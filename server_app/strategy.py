"""FedAvg over the shared prompt only, with every reply validated before it can be averaged in.

The strategy is Flower's FedAvg with the message contents narrowed to the method's shared keys.
A reply is dropped (logged and counted, never averaged) when it has an error, lacks a positive
example count, carries any array key besides the shared ones, or has a wrong shape, dtype or a
non-finite value; a reply carrying a private tensor is rejected outright. Among the replies that
pass, a training update whose L2 distance from the prompt sent this round exceeds
``max_norm_ratio`` x the round's (lower) median distance is rejected too (an absurd norm), as is a
second reply claiming a partition already seen this round or a partition id out of range.

Example counts weight the average, so a client could inflate its ``num-examples`` to dominate it:
a claim above what the server knows the partition holds (``expected_*_examples``, from the
federation when the server can list it) is rejected; where the server cannot know (``local``
partitions), a claim above ``max_examples_ratio`` x the round's (lower) median claim is rejected.

An error reply that the SuperLink made up for a node that never answered (node offline: missed
heartbeats, reply expired) is logged here but not counted: the round loop counts that node as
"no reply", once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from protocol.messages import ARRAYS, EVAL_METRICS, METRICS, content_bytes, from_record
from task.aggregate import check_shared, weighted_average, weighted_mean
from task.data_source import data_source

log = logging.getLogger(__name__)
NUM_EXAMPLES = "num-examples"
# Errors the SuperLink itself returns (src node = the SuperLink) when no reply can come.
_LINK_ERRORS = (
    ErrorCode.MESSAGE_UNAVAILABLE,
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
    ErrorCode.NODE_UNAVAILABLE,
)


@dataclass
class RoundReport:
    """What happened to the replies of one round (written to metrics.jsonl)."""

    ok: int = 0
    failed: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    per_client: dict[int, dict[str, Any]] = field(default_factory=dict)
    reply_array_keys: set[str] = field(default_factory=set)
    bytes_from: dict[int, int] = field(default_factory=dict)  # node id -> reply bytes


class SharedPromptFedAvg(FedAvg):
    """FedAvg that sends, validates and averages only ``shared_shapes``' keys."""

    def __init__(
        self,
        shared_shapes: dict[str, tuple[int, ...]],
        fp16_transport: bool = False,
        max_norm_ratio: float = 0.0,
        num_partitions: int | None = None,
        max_examples_ratio: float = 0.0,
        expected_train_examples: Mapping[int, int] | None = None,
        expected_eval_examples: Mapping[int, int] | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(weighted_by_key=NUM_EXAMPLES, **fedavg_kwargs)
        self.shared_shapes = dict(shared_shapes)
        self.wire_dtype = torch.float16 if fp16_transport else torch.float32
        self.max_norm_ratio = float(max_norm_ratio)
        self.num_partitions = num_partitions
        self.max_examples_ratio = float(max_examples_ratio)
        # Largest honest num-examples per partition, when the server knows the partitioning.
        self.expected = {
            True: dict(expected_train_examples or {}),
            False: dict(expected_eval_examples or {}),
        }
        self.configured: list[Message] = []  # this phase's messages (ids set once pushed)
        self.sent: dict[str, torch.Tensor] = {}  # the shared prompt sent in this round (fp32)
        self.train_report = RoundReport()
        self.eval_report = RoundReport()

    # -- sending ------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As FedAvg, but the record never holds anything besides the shared keys."""
        arrays = self._only_shared(arrays)
        self.sent = {k: v.float() for k, v in from_record(arrays).items()}
        self.configured = list(super().configure_train(server_round, arrays, config, grid))
        return self.configured

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        arrays = self._only_shared(arrays)
        self.configured = list(super().configure_evaluate(server_round, arrays, config, grid))
        return self.configured

    def _only_shared(self, arrays: ArrayRecord) -> ArrayRecord:
        extra = set(arrays) - set(self.shared_shapes)
        if extra:
            raise ValueError(f"refusing to send non-shared arrays {sorted(extra)}")
        return arrays

    # -- receiving ----------------------------------------------------------------------------
    def validate_reply(
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

    def _screen(
        self,
        replies: Iterable[Message],
        train: bool,
        view: Callable[[Message], RecordDict | None] | None = None,
    ) -> tuple[list, RoundReport]:
        """Validate replies; ``view`` picks the content to judge from each reply (None: skip
        it) and marks a second look at replies already counted (no bytes, no failures)."""
        report = RoundReport()
        kept = []
        seen: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            content = None
            if view is not None:
                content = None if msg.has_error() else view(msg)
                if content is None:
                    continue
            elif self._from_link(msg):
                continue
            else:
                report.bytes_from[node] = content_bytes(msg)
                if msg.has_content():
                    for rec in msg.content.array_records.values():
                        report.reply_array_keys.update(rec)
            tensors, reason = self.validate_reply(msg, train, content)
            if reason is None:
                content = msg.content if content is None else content
                pid = content.metric_records[METRICS]["partition-id"]
                if pid in seen:
                    reason = f"duplicate partition-id {pid} in this round"
                seen.add(pid)
            if reason is not None:
                kind = "failed" if msg.has_error() else "rejected"
                log.warning("round reply from node %d %s: %s", node, kind, reason)
                if msg.has_error():
                    report.failed += 1
                else:
                    self._reject(report, msg, reason)
                continue
            report.ok += 1
            kept.append((msg, tensors, dict(content.metric_records[METRICS])))
        # Deterministic order (by partition) so float sums do not depend on arrival order.
        kept.sort(key=lambda item: (item[2].get("partition-id", -1), item[0].metadata.src_node_id))
        return kept, report

    def _from_link(self, msg: Message) -> bool:
        """An error the SuperLink returned in place of a node's reply (the node never answered:
        offline after missed heartbeats, or its reply expired). Logged; the round loop counts
        the node as missing, so it is not counted here (that would count it twice)."""
        if not (
            msg.has_error()
            and msg.metadata.src_node_id == SUPERLINK_NODE_ID
            and msg.error.code in _LINK_ERRORS
        ):
            return False
        reply_to = msg.metadata.reply_to_message_id
        dst = next(
            (m.metadata.dst_node_id for m in self.configured if m.metadata.message_id == reply_to),
            None,
        )
        log.warning(
            "round reply from node %s failed: the SuperLink answered for it: %s",
            "?" if dst is None else dst,
            msg.error.reason,
        )
        return True

    @staticmethod
    def _reject(report: RoundReport, msg: Message, reason: str) -> None:
        pid = None
        if msg.has_content():
            pid = msg.content.metric_records.get(METRICS, {}).get("partition-id")
        node = msg.metadata.src_node_id
        report.rejected.append({"node": node, "partition": pid, "reason": reason})

    def prescreen(self, replies: Iterable[Message], train: bool = True) -> tuple[list, RoundReport]:
        """The replies that pass validation, and the report on the others (for DP wrappers,
        which must only ever see well-formed replies: they clip and fail on anything else)."""
        replies = list(replies)
        kept, report = self._screen(replies, train)
        ids = {id(msg) for msg, _, _ in kept}
        return [m for m in replies if id(m) in ids], report

    def _claim_outliers(self, kept: list, train: bool) -> tuple[list, list[tuple[Message, str]]]:
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

    def _drop(self, report: RoundReport, outliers: list[tuple[Message, str]]) -> None:
        for msg, reason in outliers:
            log.warning("round reply from node %d rejected: %s", msg.metadata.src_node_id, reason)
            self._reject(report, msg, reason)
            report.ok -= 1

    def _norm_outliers(self, kept: list) -> tuple[list, list[tuple[Message, str]]]:
        """Split off updates whose distance from the sent prompt is absurd for this round."""
        if self.max_norm_ratio <= 0 or not self.sent or len(kept) < 2:
            return kept, []
        norms = []
        for _, tensors, _ in kept:
            sq = sum(
                float(((t.float() - self.sent[k]) ** 2).sum()) if k in self.sent else 0.0
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

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Example-weighted average of the valid replies' shared tensors (fp32)."""
        kept, report = self._screen(replies, train=True)
        kept, inflated = self._claim_outliers(kept, train=True)
        self._drop(report, inflated)
        kept, outliers = self._norm_outliers(kept)
        self._drop(report, outliers)
        self.train_report = report
        if not kept:
            return None, None
        for msg, _, m in kept:
            pid = int(m.get("partition-id", -1))
            report.per_client[pid] = {
                "node": msg.metadata.src_node_id,
                "num_train": int(m[NUM_EXAMPLES]),
                "train_loss": float(m.get("train-loss", float("nan"))),
                **_timings(m, "train"),
            }
        states = [(t, m[NUM_EXAMPLES]) for _, t, m in kept]
        averaged = weighted_average(states) if self.shared_shapes else {}
        loss = weighted_mean([(m.get("train-loss"), m[NUM_EXAMPLES]) for _, _, m in kept])
        metrics = MetricRecord({"train-loss": loss, NUM_EXAMPLES: sum(n for _, n in states)})
        return ArrayRecord(averaged), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Test-size-weighted personalised and shared-only accuracy, plus per-client values."""
        return self._aggregate_evaluation(*self._screen(replies, train=False))

    def aggregate_fused_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The evaluations that rode in this round's training replies (server.eval-mode=fused):
        validated and averaged exactly as evaluate replies are; ``eval_report`` counts only the
        replies that carried one (the train report already counted bytes and failures)."""

        def evaluation(msg: Message) -> RecordDict | None:
            record = msg.content.metric_records.get(EVAL_METRICS) if msg.has_content() else None
            return None if record is None else RecordDict({METRICS: record})

        return self._aggregate_evaluation(*self._screen(replies, train=False, view=evaluation))

    def _aggregate_evaluation(self, kept: list, report: RoundReport) -> MetricRecord | None:
        kept, inflated = self._claim_outliers(kept, train=False)
        self._drop(report, inflated)
        self.eval_report = report
        if not kept:
            return None
        out: dict[str, float] = {}
        for key in ("personalised-accuracy", "global-accuracy", "personalised-loss"):
            out[key] = weighted_mean([(m.get(key), m[NUM_EXAMPLES]) for _, _, m in kept])
        out[NUM_EXAMPLES] = int(sum(m[NUM_EXAMPLES] for _, _, m in kept))
        if all("zeroshot-accuracy" in m for _, _, m in kept):
            pairs = [(m["zeroshot-accuracy"], m[NUM_EXAMPLES]) for _, _, m in kept]
            out["zeroshot-accuracy"] = weighted_mean(pairs)
        for msg, _, m in kept:
            report.per_client[int(m.get("partition-id", -1))] = {
                "node": msg.metadata.src_node_id,
                "num_test": int(m[NUM_EXAMPLES]),
                "personalised_accuracy": float(m.get("personalised-accuracy", float("nan"))),
                "global_accuracy": float(m.get("global-accuracy", float("nan"))),
                **_timings(m, "eval"),
            }
        return MetricRecord(out)


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


def _timings(metrics: Mapping[str, Any], phase: str) -> dict[str, float]:
    """A reply's ``time-*`` seconds as ``<phase>_<name>_s`` and its ``at-*`` wall-clock marks
    as ``<phase>_at_<name>`` (bench.simulation and bench.deploy_overhead split rounds)."""
    out = {}
    for k, v in metrics.items():
        if not (isinstance(v, int | float) and math.isfinite(v)):
            continue
        if k.startswith("time-"):
            out[f"{phase}_{k[5:]}_s"] = float(v)
        elif k.startswith("at-"):
            out[f"{phase}_at_{k[3:]}"] = float(v)
    return out


def _no_examples(metrics: Mapping[str, Any], key: str, value: Any) -> bool:
    """NaN is the honest accuracy of a model evaluated on nothing (e.g. ``local``'s global one)."""
    count = metrics.get(key.replace("accuracy", "num-examples"))
    return isinstance(value, float) and math.isnan(value) and count == 0


def expected_examples(core: Any) -> dict[str, dict[int, int]]:
    """``expected_train_examples`` / ``expected_eval_examples`` for SharedPromptFedAvg: the most
    examples each partition can honestly report (train: max(1, epochs) x its train split, as
    task.train counts them; evaluate: its test split), when the server can list the federation
    (every partitioner but ``local``, whose images live only on the nodes). Empty otherwise."""
    return data_source(core.data).expected_examples(core.train.epochs)
