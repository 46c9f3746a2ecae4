"""The two phases of a server round, free of the loop's bookkeeping: training (send the global
state, validate and average the replies, collect a fused evaluation riding in them) and
evaluation (ask the clients to score the global state). Both go through one :func:`exchange`
(sample, send, wait, count the silent nodes); the strategy's outcomes and the round's
:class:`RoundTally` carry what was measured."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from protocol.appcode import app_digest
from protocol.keys import APP_DIGEST, EVALUATE_ROUND, EXPERIMENT, ZEROSHOT
from protocol.messages import content_bytes, payload_bytes, to_record
from server_app.experts import ExpertRouter
from server_app.strategy import EvaluationOutcome, RoundReport, SharedPromptFedAvg
from server_app.transport import send_and_receive
from task.config import AppConfig
from task.local.global_model import global_evaluate
from task.runs.run_dir import RunDir
from task.seeds import derive_seed

log = logging.getLogger("server_app.loop")


class RoundFailedError(RuntimeError):
    """Too few valid training replies for a round (server.min-replies); nothing of it is saved."""


@dataclass
class RoundTally:
    """What one round's phases (train, evaluate) add up to: bytes each way per node, failures,
    rejections, per-client values; becomes the round's metrics line."""

    bytes_to: dict[int, int] = field(default_factory=dict)
    bytes_from: dict[int, int] = field(default_factory=dict)
    node_pid: dict[int, int] = field(default_factory=dict)
    per_client: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    keys_seen: set[str] = field(default_factory=set)
    payload: int = 0

    def sent(self, messages: list[Message]) -> None:
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.bytes_to[node] = self.bytes_to.get(node, 0) + content_bytes(msg)

    def absorb(self, rep: RoundReport, missing: int = 0) -> None:
        """Fold one phase's reply report (train or evaluate) into the round's tallies."""
        for node, n in rep.bytes_from.items():
            self.bytes_from[node] = self.bytes_from.get(node, 0) + n
        self.failed += rep.failed + missing
        self.rejected.extend(rep.rejected)
        self.keys_seen.update(rep.reply_array_keys)
        for pid, values in rep.per_client.items():
            self.node_pid[values["node"]] = pid
            self.per_client.setdefault(pid, {}).update(values)

    def metrics(self, fp16_transport: bool) -> dict[str, Any]:
        per_client = {pid: dict(v) for pid, v in self.per_client.items()}
        for node, n in self.bytes_to.items():
            per_client.setdefault(self.node_pid.get(node, -node), {})["bytes_received"] = n
        for node, n in self.bytes_from.items():
            per_client.setdefault(self.node_pid.get(node, -node), {})["bytes_sent"] = n
        return {
            "per_client": {str(pid): _public(per_client[pid]) for pid in sorted(per_client)},
            "clients_failed": self.failed,
            "replies_rejected": len(self.rejected),
            "rejected": self.rejected,
            "reply_array_keys": sorted(self.keys_seen),
            "bytes_to_clients": sum(self.bytes_to.values()),
            "bytes_from_clients": sum(self.bytes_from.values()),
            "shared_payload_bytes": self.payload,
            "fp16_transport": fp16_transport,
        }


def _public(values: dict[str, Any]) -> dict[str, Any]:
    """A per-client entry as metrics.jsonl holds it (the node id stays on the server)."""
    return {k: v for k, v in values.items() if k != "node"}


@dataclass
class Exchanged:
    """One phase's round trip: the messages sent, the replies, when, and who never answered."""

    messages: list[Message]
    replies: list[Message]
    sent_at: float
    received_at: float
    missing: int


def exchange(
    grid: Grid,
    cfg: AppConfig,
    configure: Any,
    shared: dict[str, torch.Tensor],
    server_round: int,
    config: dict[str, Any],
    tally: RoundTally,
    purpose: str,
    router: ExpertRouter | None = None,
    on_reply: Callable[[int, int], None] | None = None,
) -> Exchanged:
    """Sample nodes (seeded per round and phase, so a replay samples alike), send the shared
    state encoded once (plus each node's own experts with pFedMoAP's ``router``), wait for the
    replies; nodes that sent nothing are logged."""
    srv = cfg.server
    random.seed(derive_seed(cfg.core.train.seed, server_round, -1, purpose))
    config = {**config, APP_DIGEST: app_digest()}
    record = to_record(shared, srv.fp16_transport)
    messages = list(configure(server_round, record, ConfigRecord(config), grid))
    if router is not None:
        router.attach(messages)
    tally.sent(messages)
    sent_at = time.time()
    replies = send_and_receive(grid, messages, srv.timeout, on_reply)
    received_at = time.time()
    kind = "train" if purpose == "sample" else "evaluate"
    missing = _missing(messages, replies, server_round, kind)
    return Exchanged(messages, replies, sent_at, received_at, missing)


def wire_copy(shared: dict[str, torch.Tensor], fp16: bool) -> dict[str, torch.Tensor]:
    """The shared state as the clients receive it (fp16-rounded with fp16 transport), fp32:
    what an update's distance is measured from."""
    dtype = torch.float16 if fp16 else torch.float32
    return {k: v.detach().cpu().to(dtype).float() for k, v in shared.items()}


def train_phase(
    grid: Grid,
    cfg: AppConfig,
    strategy: SharedPromptFedAvg,
    dp: Any,
    run: RunDir,
    shared: dict[str, torch.Tensor],
    server_round: int,
    tally: RoundTally,
    evaluate_round: int | None = None,
    router: ExpertRouter | None = None,
    on_reply: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Send the global state, aggregate the valid replies (through the DP wrapper if any);
    returns the new shared state, the phase's record fields and, when ``evaluate_round`` asked
    the clients to evaluate the state they received first, that round's evaluation fields."""
    srv = cfg.server
    config: dict[str, Any] = {EXPERIMENT: run.experiment_id}
    if evaluate_round is not None:
        config[EVALUATE_ROUND] = evaluate_round
        if needs_zeroshot(run):
            config[ZEROSHOT] = True
    trainer = dp if dp is not None else strategy
    ex = exchange(
        grid,
        cfg,
        trainer.configure_train,
        shared,
        server_round,
        config,
        tally,
        "sample",
        router,
        on_reply,
    )
    tally.payload = payload_bytes(ex.messages[0].content) if ex.messages else 0
    if dp is not None:
        dp.num_sampled_clients = max(1, len(ex.messages))
        np.random.seed(derive_seed(cfg.core.train.seed, server_round, -1, "dp-noise"))
    sent = wire_copy(shared, srv.fp16_transport)
    outcome = strategy.train_outcome(server_round, ex.replies, ex.messages, sent, dp)
    rep = outcome.report
    rep.failed += ex.missing
    _require_replies(rep, len(ex.messages), server_round, srv.replies_needed)
    tally.absorb(rep)
    if router is not None:
        router.update(outcome.kept, server_round)
    fields: dict[str, Any] = {
        "clients_ok": rep.ok,
        "train_sent_at": ex.sent_at,
        "train_received_at": ex.received_at,
    }
    evaluation = None
    if evaluate_round is not None:
        fused = strategy.evaluation_outcome(ex.replies, ex.messages, fused=True)
        evaluation = _fused_fields(fused, srv.global_eval)
    if outcome.shared is not None:
        shared = outcome.shared
        fields["train_loss"] = outcome.train_loss
    else:
        log.warning(
            "round %d: no valid training reply; the shared prompt is unchanged", server_round
        )
    return shared, fields, evaluation


def _require_replies(rep: RoundReport, sent: int, server_round: int, needed: int) -> None:
    """Fail the round (nothing of it saved) when too few training replies were valid."""
    if rep.ok >= needed:
        return
    err = RoundFailedError(
        f"round {server_round} failed: {rep.ok} valid training repl"
        f"{'y' if rep.ok == 1 else 'ies'} of {sent} sent (failed {rep.failed}, "
        f"rejected {len(rep.rejected)}; reasons: "
        f"{[r['reason'] for r in rep.rejected]}), server.min-replies={needed}. "
        f"Nothing of round {server_round} was saved: restarting the run (same run.name) "
        f"resumes after round {server_round - 1}"
    )
    log.error("%s", err)
    raise err


def _eval_fields(outcome: EvaluationOutcome, global_eval: str) -> dict[str, Any]:
    """A round's evaluation fields; the clients' global accuracy only when they score it."""
    fields = dict(outcome.fields or {})
    if global_eval != "client":
        fields.pop("global_accuracy", None)
    return fields


def _fused_fields(outcome: EvaluationOutcome, global_eval: str) -> dict[str, Any]:
    """The previous round's evaluation fields from this round's training replies."""
    if outcome.fields is None:
        return {"evaluated": False, "evaluation": "fused-missing", "clients_evaluated": 0}
    rep = outcome.report
    return {
        **_eval_fields(outcome, global_eval),
        "evaluated": True,
        "evaluation": "fused",
        "clients_evaluated": rep.ok,
        "eval_rejected": rep.rejected,
        "per_client": {str(pid): _public(v) for pid, v in rep.per_client.items()},
    }


def evaluate_phase(
    grid: Grid,
    cfg: AppConfig,
    strategy: SharedPromptFedAvg,
    run: RunDir,
    shared: dict[str, torch.Tensor],
    server_round: int,
    tally: RoundTally,
    router: ExpertRouter | None = None,
) -> dict[str, Any]:
    """Ask the clients to score the global state (personalised with their private parts), and
    the first time in a run also the frozen zero-shot model; returns the record fields."""
    config: dict[str, Any] = {EXPERIMENT: run.experiment_id}
    if needs_zeroshot(run):
        config[ZEROSHOT] = True
    ex = exchange(
        grid,
        cfg,
        strategy.configure_evaluate,
        shared,
        server_round,
        config,
        tally,
        "sample-eval",
        router,
    )
    outcome = strategy.evaluation_outcome(ex.replies, ex.messages)
    tally.absorb(outcome.report, ex.missing)
    fields: dict[str, Any] = {
        "clients_ok": outcome.report.ok,
        "eval_sent_at": ex.sent_at,
        "eval_received_at": ex.received_at,
        **_eval_fields(outcome, cfg.server.global_eval),
    }
    if cfg.server.global_eval == "server":
        fields.update(server_global_eval(cfg, shared))
    return fields


def server_global_eval(cfg: AppConfig, shared: dict[str, torch.Tensor]) -> dict[str, Any]:
    res = global_evaluate(cfg.core, shared, cfg.client.on_corrupt)
    return {"global_accuracy": res.accuracy, "global_loss": res.loss}


def needs_zeroshot(run: RunDir) -> bool:
    """The frozen model's zero-shot accuracy is asked for once per run, with the first
    evaluation (the reference every later accuracy is compared with, on the same images)."""
    return not any(_finite(m.get("zeroshot_accuracy")) for m in run.read_metrics())


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _missing(messages: list, replies: list, server_round: int, kind: str) -> int:
    """Messages that got no reply at all (node gone, timeout): logged, counted as failed."""
    answered = {m.metadata.src_node_id for m in replies}
    gone = sorted({m.metadata.dst_node_id for m in messages} - answered)
    if gone:
        log.warning(
            "round %d %s: no reply from node(s) %s (counted as failed)", server_round, kind, gone
        )
    return len(gone)
