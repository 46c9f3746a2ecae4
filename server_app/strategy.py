"""FedAvg over the shared prompt only, with every reply validated once before it can be averaged
in (the rules: server_app/reply_rules.py).

The strategy is Flower's FedAvg with the message contents narrowed to the method's shared keys.
A reply is dropped (logged and counted, never averaged) when it has an error, lacks a positive
example count, carries any array key besides the shared ones, or has a wrong shape, dtype or a
non-finite value; a reply carrying a private tensor is rejected outright. Among the replies that
pass, a training update whose L2 distance from the prompt sent this round exceeds
``max_norm_ratio`` x the round's (lower) median distance is rejected too (an absurd norm), as is a
second reply claiming a partition already seen this round or a partition id out of range.

Example counts weight the average, so a client could inflate its ``num-examples`` to dominate it:
a claim above what the server knows the partition holds (``limits``, from the federation when the
server can list it) is rejected; where the server cannot know (``local`` partitions), a claim
above ``max_examples_ratio`` x the round's (lower) median claim is rejected.

The strategy returns what it measured: :meth:`train_outcome` (the averaged tensors, the mean
loss, the round report) and :meth:`evaluation_outcome` (the averaged accuracies and the report).
Flower's ``aggregate_train`` stays for the DP wrappers, which clip the replies and call it.

An error reply that the SuperLink made up for a node that never answered (node offline: missed
heartbeats, reply expired) is logged here but not counted: the round loop counts that node as
"no reply", once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from protocol.keys import ARRAYS, EVAL_METRICS, METRICS, NUM_EXAMPLES, PARTITION_ID, TRAIN_LOSS
from protocol.messages import content_bytes, from_record
from server_app.aggregate import aggregate_shared, weighted_mean
from server_app.bindings import PartitionBindings
from server_app.reply_rules import Reply, ReplyRules
from task.data.source import ExampleLimits

log = logging.getLogger(__name__)
# Errors the SuperLink itself returns (src node = the SuperLink) when no reply can come.
_LINK_ERRORS = (
    ErrorCode.MESSAGE_UNAVAILABLE,
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
    ErrorCode.NODE_UNAVAILABLE,
)


@dataclass
class RoundReport:
    """What happened to the replies of one phase (written to metrics.jsonl)."""

    ok: int = 0
    failed: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    per_client: dict[int, dict[str, Any]] = field(default_factory=dict)
    reply_array_keys: set[str] = field(default_factory=set)
    bytes_from: dict[int, int] = field(default_factory=dict)  # node id -> reply bytes

    def reject(self, msg: Message, reason: str) -> None:
        pid = None
        if msg.has_content():
            pid = msg.content.metric_records.get(METRICS, {}).get(PARTITION_ID)
        self.rejected.append({"node": msg.metadata.src_node_id, "partition": pid, "reason": reason})


@dataclass
class Screening:
    """The replies of one phase that passed validation (by partition), and the report."""

    kept: list[Reply]
    report: RoundReport

    def drop(self, outliers: list[tuple[Message, str]]) -> None:
        """Move replies an outlier rule refused from ``kept`` to the report's rejections."""
        gone = {id(msg) for msg, _ in outliers}
        self.kept = [r for r in self.kept if id(r.msg) not in gone]
        for msg, reason in outliers:
            log.warning("round reply from node %d rejected: %s", msg.metadata.src_node_id, reason)
            self.report.reject(msg, reason)
            self.report.ok -= 1


@dataclass
class TrainOutcome:
    """A training phase: the new shared state (None: no valid reply), its mean loss, report."""

    shared: dict[str, torch.Tensor] | None
    train_loss: float | None
    report: RoundReport
    num_examples: int | float = 0  # summed over the replies averaged in
    kept: list[Reply] = field(default_factory=list)  # the replies averaged in


@dataclass
class EvaluationOutcome:
    """An evaluation phase: example-weighted accuracies (None: no valid reply), report."""

    fields: dict[str, float] | None
    report: RoundReport


class SharedPromptFedAvg(FedAvg):
    """FedAvg that sends, validates and averages only ``shared_shapes``' keys."""

    def __init__(
        self,
        shared_shapes: dict[str, tuple[int, ...]],
        fp16_transport: bool = False,
        max_norm_ratio: float = 0.0,
        num_partitions: int | None = None,
        max_examples_ratio: float = 0.0,
        limits: ExampleLimits | None = None,
        max_update_norm: float = 0.0,
        bindings: PartitionBindings | None = None,
        aggregation: tuple[str, float, int] = ("fedavg", 0.2, 1),
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(weighted_by_key=NUM_EXAMPLES, **fedavg_kwargs)
        self.shared_shapes = dict(shared_shapes)
        self.wire_dtype = torch.float16 if fp16_transport else torch.float32
        limits = limits or ExampleLimits()
        self.rules = ReplyRules(
            self.shared_shapes,
            self.wire_dtype,
            num_partitions,
            float(max_norm_ratio),
            float(max_examples_ratio),
            # Largest honest num-examples per partition, when the server knows the partitioning.
            {True: dict(limits.train), False: dict(limits.evaluate)},
            float(max_update_norm),
        )
        self.bindings = bindings
        # server.aggregation, server.trim-fraction, server.krum-byzantine
        self.aggregation = aggregation
        # The DP wrapper's call back into aggregate_train needs this round's screening.
        self._dp_round: tuple[Screening, Mapping[str, torch.Tensor]] | None = None

    # -- sending ------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As FedAvg, but the record never holds anything besides the shared keys."""
        return list(super().configure_train(server_round, self._only_shared(arrays), config, grid))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        arrays = self._only_shared(arrays)
        return list(super().configure_evaluate(server_round, arrays, config, grid))

    def _only_shared(self, arrays: ArrayRecord) -> ArrayRecord:
        extra = set(arrays) - set(self.shared_shapes)
        if extra:
            raise ValueError(f"refusing to send non-shared arrays {sorted(extra)}")
        return arrays

    # -- receiving ----------------------------------------------------------------------------
    def screen(
        self,
        replies: Iterable[Message],
        train: bool,
        sent: list[Message] | None = None,
        view: Callable[[Message], RecordDict | None] | None = None,
    ) -> Screening:
        """Validate each reply once. ``view`` picks the content to judge from each reply (None:
        skip it) and marks a second look at replies already counted (no bytes, no failures);
        ``sent``: this phase's messages (to name the node of a reply the SuperLink made up)."""
        report = RoundReport()
        kept: list[Reply] = []
        seen: set[int] = set()
        active = {m.metadata.dst_node_id for m in sent} if sent else None
        for msg in replies:
            node = msg.metadata.src_node_id
            content = None
            if view is not None:
                content = None if msg.has_error() else view(msg)
                if content is None:
                    continue
            elif self._from_link(msg, sent or []):
                continue
            else:
                report.bytes_from[node] = content_bytes(msg)
                if msg.has_content():
                    for rec in msg.content.array_records.values():
                        report.reply_array_keys.update(rec)
            try:
                reply, reason = self.rules.validate(msg, train, content)
                if reply is not None:
                    if reply.partition_id in seen:
                        reason = f"duplicate partition-id {reply.partition_id} in this round"
                    elif self.bindings is not None:
                        reason = self.bindings.check(reply.partition_id, node, active)
                    if reason is None:  # a refused claim must not block the partition's node
                        seen.add(reply.partition_id)
            except Exception as err:  # noqa: BLE001 (no reply may crash the round)
                reply, reason = None, f"could not be screened: {type(err).__name__}: {err}"
            if reason is not None:
                kind = "failed" if msg.has_error() else "rejected"
                log.warning("round reply from node %d %s: %s", node, kind, reason)
                if msg.has_error():
                    report.failed += 1
                else:
                    report.reject(msg, reason)
                continue
            report.ok += 1
            kept.append(reply)
        # Deterministic order (by partition) so float sums do not depend on arrival order.
        kept.sort(key=lambda r: (r.partition_id, r.node))
        return Screening(kept, report)

    @staticmethod
    def _from_link(msg: Message, sent: list[Message]) -> bool:
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
            (m.metadata.dst_node_id for m in sent if m.metadata.message_id == reply_to), None
        )
        log.warning(
            "round reply from node %s failed: the SuperLink answered for it: %s",
            "?" if dst is None else dst,
            msg.error.reason,
        )
        return True

    # -- training -----------------------------------------------------------------------------
    def train_outcome(
        self,
        server_round: int,
        replies: list[Message],
        sent_messages: list[Message],
        sent: Mapping[str, torch.Tensor],
        dp: Any = None,
    ) -> TrainOutcome:
        """Screen the training replies once and average the valid ones (through Flower's DP
        wrapper when ``dp``: it clips them and adds noise to the average)."""
        screening = self.screen(replies, train=True, sent=sent_messages)
        if dp is None:
            shared, loss = self._average(screening, sent)
            total = sum(r.num_examples for r in screening.kept)
            return TrainOutcome(shared, loss, screening.report, total, screening.kept)
        # The DP wrapper clips whatever it is given and skips the round on any error reply:
        # give it only replies that passed validation.
        self._dp_round = (screening, sent)
        try:
            arrays, metrics = dp.aggregate_train(server_round, [r.msg for r in screening.kept])
        finally:
            self._dp_round = None
        if arrays is None:
            return TrainOutcome(None, None, screening.report)
        shared = {k: v.to(torch.float32) for k, v in from_record(arrays).items()}
        total = metrics[NUM_EXAMPLES]
        loss = float(metrics[TRAIN_LOSS])
        return TrainOutcome(shared, loss, screening.report, total, screening.kept)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook (called by the DP wrappers with the replies they clipped): the
        example-weighted average of the valid replies' shared tensors (fp32)."""
        replies = list(replies)
        if self._dp_round is None:
            screening, sent = self.screen(replies, train=True), {}
        else:  # already screened: read the clipped tensors of the same replies
            screening, sent = self._dp_round
            by_id = {id(m): m for m in replies}
            screening.kept = [
                dataclasses.replace(r, tensors=from_record(by_id[id(r.msg)].content[ARRAYS]))
                for r in screening.kept
                if id(r.msg) in by_id
            ]
        shared, loss = self._average(screening, sent)
        if shared is None:
            return None, None
        total = sum(r.num_examples for r in screening.kept)
        return ArrayRecord(shared), MetricRecord({TRAIN_LOSS: loss, NUM_EXAMPLES: total})

    def _average(
        self, screening: Screening, sent: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor] | None, float | None]:
        """Apply the round's outlier rules, then aggregate the shared tensors of what is left
        (FedAvg, or the robust rule of ``server.aggregation``)."""
        screening.drop(self.rules.claim_outliers(screening.kept, train=True)[1])
        screening.drop(self.rules.norm_cap(screening.kept, sent)[1])
        screening.drop(self.rules.norm_outliers(screening.kept, sent)[1])
        kept = screening.kept
        if not kept:
            return None, None
        for r in kept:
            screening.report.per_client[r.partition_id] = r.metrics.record_fields(r.node)
        states = [(r.tensors, r.num_examples) for r in kept]
        averaged = aggregate_shared(states, *self.aggregation) if self.shared_shapes else {}
        loss = weighted_mean([(r.metrics.train_loss, r.num_examples) for r in kept])
        return averaged, loss

    # -- evaluation ---------------------------------------------------------------------------
    def evaluation_outcome(
        self, replies: list[Message], sent_messages: list[Message], fused: bool = False
    ) -> EvaluationOutcome:
        """Test-size-weighted personalised and shared-only accuracy of the evaluate replies, or
        (``fused``: server.eval-mode=fused) of the evaluations that rode in training replies,
        validated exactly as evaluate replies are; a fused report counts only the replies that
        carried one (the train report already counted bytes and failures)."""
        view = _fused_evaluation if fused else None
        screening = self.screen(replies, train=False, sent=sent_messages, view=view)
        screening.drop(self.rules.claim_outliers(screening.kept, train=False)[1])
        kept = screening.kept
        if not kept:
            return EvaluationOutcome(None, screening.report)
        weights = [r.num_examples for r in kept]
        metrics = [r.metrics for r in kept]
        out = {
            "personalised_accuracy": _mean([m.personalised_accuracy for m in metrics], weights),
            "global_accuracy": _mean([m.global_accuracy for m in metrics], weights),
            "personalised_loss": _mean([m.personalised_loss for m in metrics], weights),
        }
        if all(m.zeroshot_accuracy is not None for m in metrics):
            out["zeroshot_accuracy"] = _mean([m.zeroshot_accuracy for m in metrics], weights)
        for r in kept:
            screening.report.per_client[r.partition_id] = r.metrics.record_fields(r.node)
        return EvaluationOutcome(out, screening.report)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Flower's hook: the evaluation averages as a MetricRecord."""
        outcome = self.evaluation_outcome(list(replies), [])
        return None if outcome.fields is None else MetricRecord(outcome.fields)


def _fused_evaluation(msg: Message) -> RecordDict | None:
    """The evaluation a training reply carries (server.eval-mode=fused), as an evaluate reply."""
    record = msg.content.metric_records.get(EVAL_METRICS) if msg.has_content() else None
    return None if record is None else RecordDict({METRICS: record})


def _mean(values: list[float], weights: list[int | float]) -> float:
    return weighted_mean(list(zip(values, weights, strict=True)))
