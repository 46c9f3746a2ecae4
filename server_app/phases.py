"""The two phases of a server round, free of the loop's bookkeeping: training (send the global
state, validate and average the replies, collect a fused evaluation riding in them) and
evaluation (ask the clients to score the global state), and the tally they add up to."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from protocol.messages import (
    EVALUATE_ROUND,
    ZEROSHOT_KEY,
    content_bytes,
    from_record,
    payload_bytes,
    to_record,
)
from server_app.strategy import SharedPromptFedAvg
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

    def sent(self, messages: list) -> None:
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.bytes_to[node] = self.bytes_to.get(node, 0) + content_bytes(msg)

    def absorb(self, rep: Any, missing: int = 0) -> None:
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
        for values in per_client.values():
            values.pop("node", None)
        return {
            "per_client": {str(pid): per_client[pid] for pid in sorted(per_client)},
            "clients_failed": self.failed,
            "replies_rejected": len(self.rejected),
            "rejected": self.rejected,
            "reply_array_keys": sorted(self.keys_seen),
            "bytes_to_clients": sum(self.bytes_to.values()),
            "bytes_from_clients": sum(self.bytes_from.values()),
            "shared_payload_bytes": self.payload,
            "fp16_transport": fp16_transport,
        }


def server_global_eval(cfg: AppConfig, shared: dict[str, torch.Tensor]) -> dict[str, Any]:
    res = global_evaluate(cfg.core, shared, cfg.client.on_corrupt)
    return {"global_accuracy": res.accuracy, "global_loss": res.loss}


def _eval_fields(metrics: Any, global_eval: str) -> dict[str, Any]:
    """A round's evaluation fields from the strategy's aggregated evaluation metrics."""
    fields: dict[str, Any] = {
        "personalised_accuracy": float(metrics["personalised-accuracy"]),
        "personalised_loss": float(metrics["personalised-loss"]),
    }
    if global_eval == "client":
        fields["global_accuracy"] = float(metrics["global-accuracy"])
    if "zeroshot-accuracy" in metrics:
        fields["zeroshot_accuracy"] = float(metrics["zeroshot-accuracy"])
    return fields


def needs_zeroshot(run: RunDir) -> bool:
    """The frozen model's zero-shot accuracy is asked for once per run, with the first
    evaluation (the reference every later accuracy is compared with, on the same images)."""
    return not any(_finite(m.get("zeroshot_accuracy")) for m in run.read_metrics())


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
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Send the global state, aggregate the valid replies (through the DP wrapper if any);
    returns the new shared state, the phase's record fields and, when ``evaluate_round`` asked
    the clients to evaluate the state they received first, that round's evaluation fields."""
    srv = cfg.server
    config = ConfigRecord({"experiment": run.experiment_id})
    if evaluate_round is not None:
        config[EVALUATE_ROUND] = evaluate_round
        if needs_zeroshot(run):
            config[ZEROSHOT_KEY] = True
    # Node sampling (FedAvg uses `random`) seeded per round, so a replay samples alike.
    random.seed(derive_seed(cfg.core.train.seed, server_round, -1, "sample"))
    trainer = dp if dp is not None else strategy
    messages = list(
        trainer.configure_train(
            server_round, to_record(shared, srv.fp16_transport), ConfigRecord(config), grid
        )
    )
    tally.payload = payload_bytes(messages[0].content) if messages else 0
    tally.sent(messages)
    sent_at = time.time()
    replies = list(grid.send_and_receive(messages, timeout=srv.timeout))
    received_at = time.time()
    missing = _missing(messages, replies, server_round, "train")
    if dp is None:
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        rep = strategy.train_report
    else:
        # The DP wrapper clips whatever it is given and skips the round on any error reply:
        # give it only replies that passed validation, and keep the report on the others.
        valid, pre = strategy.prescreen(replies)
        dp.num_sampled_clients = max(1, len(messages))
        np.random.seed(derive_seed(cfg.core.train.seed, server_round, -1, "dp-noise"))
        arrays, metrics = dp.aggregate_train(server_round, valid)
        rep = strategy.train_report
        rep.failed += pre.failed
        rep.rejected = pre.rejected + rep.rejected
        rep.bytes_from = {**pre.bytes_from, **rep.bytes_from}
        rep.reply_array_keys |= pre.reply_array_keys
    rep.failed += missing
    if rep.ok < srv.min_replies:
        err = RoundFailedError(
            f"round {server_round} failed: {rep.ok} valid training repl"
            f"{'y' if rep.ok == 1 else 'ies'} of {len(messages)} sent (failed {rep.failed}, "
            f"rejected {len(rep.rejected)}; reasons: "
            f"{[r['reason'] for r in rep.rejected]}), server.min-replies={srv.min_replies}. "
            f"Nothing of round {server_round} was saved: restarting the run (same run.name) "
            f"resumes after round {server_round - 1}"
        )
        log.error("%s", err)
        raise err
    tally.absorb(rep)
    fields: dict[str, Any] = {
        "clients_ok": rep.ok,
        "train_sent_at": sent_at,
        "train_received_at": received_at,
    }
    evaluation = None
    if evaluate_round is not None:
        evaluation = _fused_evaluation(strategy, server_round, replies, srv.global_eval)
    if arrays is not None:
        shared = {k: v.to(torch.float32) for k, v in from_record(arrays).items()}
        fields["train_loss"] = float(metrics["train-loss"]) if metrics else None
    else:
        log.warning(
            "round %d: no valid training reply; the shared prompt is unchanged", server_round
        )
    return shared, fields, evaluation


def _fused_evaluation(
    strategy: SharedPromptFedAvg, server_round: int, replies: list, global_eval: str
) -> dict[str, Any] | None:
    """The previous round's evaluation fields from this round's training replies."""
    metrics = strategy.aggregate_fused_evaluate(server_round, replies)
    rep = strategy.eval_report
    if metrics is None:
        return {"evaluated": False, "evaluation": "fused-missing", "clients_evaluated": 0}
    per_client = {}
    for pid, values in rep.per_client.items():
        per_client[str(pid)] = {k: v for k, v in values.items() if k != "node"}
    return {
        **_eval_fields(metrics, global_eval),
        "evaluated": True,
        "evaluation": "fused",
        "clients_evaluated": rep.ok,
        "eval_rejected": rep.rejected,
        "per_client": per_client,
    }


def evaluate_phase(
    grid: Grid,
    cfg: AppConfig,
    strategy: SharedPromptFedAvg,
    run: RunDir,
    shared: dict[str, torch.Tensor],
    server_round: int,
    tally: RoundTally,
) -> dict[str, Any]:
    """Ask the clients to score the global state (personalised with their private parts), and
    the first time in a run also the frozen zero-shot model; returns the record fields."""
    srv = cfg.server
    random.seed(derive_seed(cfg.core.train.seed, server_round, -1, "sample-eval"))
    eval_config = ConfigRecord({"experiment": run.experiment_id})
    if needs_zeroshot(run):
        eval_config[ZEROSHOT_KEY] = True
    messages = list(
        strategy.configure_evaluate(
            server_round, to_record(shared, srv.fp16_transport), eval_config, grid
        )
    )
    tally.sent(messages)
    sent_at = time.time()
    replies = list(grid.send_and_receive(messages, timeout=srv.timeout))
    received_at = time.time()
    missing = _missing(messages, replies, server_round, "evaluate")
    metrics = strategy.aggregate_evaluate(server_round, replies)
    rep = strategy.eval_report
    tally.absorb(rep, missing)
    fields: dict[str, Any] = {
        "clients_ok": rep.ok,
        "eval_sent_at": sent_at,
        "eval_received_at": received_at,
    }
    if metrics is not None:
        fields.update(_eval_fields(metrics, srv.global_eval))
    if srv.global_eval == "server":
        fields.update(server_global_eval(cfg, shared))
    return fields


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
