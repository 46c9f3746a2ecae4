"""FedAvg over the shared prompt only, with every reply validated before it can be averaged in
(the rules: server_app/reply_rules.py).

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

from protocol.messages import EVAL_METRICS, METRICS, content_bytes, from_record
from server_app.aggregate import weighted_average, weighted_mean
from server_app.reply_rules import NUM_EXAMPLES, ReplyRules
from task.data.source import data_source

log = logging.getLogger(__name__)
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
        self.rules = ReplyRules(
            self.shared_shapes,
            torch.float16 if fp16_transport else torch.float32,
            num_partitions,
            float(max_norm_ratio),
            float(max_examples_ratio),
            # Largest honest num-examples per partition, when the server knows the partitioning.
            {True: dict(expected_train_examples or {}), False: dict(expected_eval_examples or {})},
        )
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
        """(shared tensors or {}, None) for a usable reply, (None, reason) otherwise."""
        return self.rules.validate(msg, train, content)

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

    def _drop(self, report: RoundReport, outliers: list[tuple[Message, str]]) -> None:
        for msg, reason in outliers:
            log.warning("round reply from node %d rejected: %s", msg.metadata.src_node_id, reason)
            self._reject(report, msg, reason)
            report.ok -= 1

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Example-weighted average of the valid replies' shared tensors (fp32)."""
        kept, report = self._screen(replies, train=True)
        kept, inflated = self.rules.claim_outliers(kept, train=True)
        self._drop(report, inflated)
        kept, outliers = self.rules.norm_outliers(kept, self.sent)
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
        kept, inflated = self.rules.claim_outliers(kept, train=False)
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


def expected_examples(core: Any) -> dict[str, dict[int, int]]:
    """``expected_train_examples`` / ``expected_eval_examples`` for SharedPromptFedAvg: the most
    examples each partition can honestly report (train: max(1, epochs) x its train split, as
    task.local.train counts them; evaluate: its test split), when the server can list the federation
    (every partitioner but ``local``, whose images live only on the nodes). Empty otherwise."""
    return data_source(core.data).expected_examples(core.train.epochs)
