"""The server's round loop: train, aggregate, evaluate every k rounds, checkpoint, resume.

Flower's ``Strategy.start`` runs a fixed loop from round 1; a resumable run with a run directory,
evaluation cadence and byte accounting needs its own loop, so this drives the strategy's
configure/aggregate hooks itself over the Grid. It takes a Grid and a flat run config, so tests can
drive it in-process with a fake Grid.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from protocol.messages import (
    EVALUATE_ROUND,
    ZEROSHOT_KEY,
    content_bytes,
    from_record,
    payload_bytes,
    to_record,
)
from server_app.strategy import SharedPromptFedAvg, expected_examples
from task.config import AppConfig, parse_app_config
from task.data.federation import write_run_manifest
from task.data_source import data_source
from task.global_model import global_evaluate, initial_shared
from task.methods import get_method
from task.preflight import run_preflight
from task.run_dir import RunDir, summarise, summary_table
from task.runtime import derive_seed, get_federation

log = logging.getLogger(__name__)


class RoundFailedError(RuntimeError):
    """Too few valid training replies for a round (server.min-replies); nothing of it is saved."""


def preflight(cfg: AppConfig) -> None:
    """task.preflight before anything is written: data root, folder-to-class mapping, images per
    class, federation (built once, through the cached get_federation), model directory.

    With data.partitioner=local the data lives only on the nodes (node config data-root): the
    server lists nothing, and each node checks its own folder when it first gets a message.
    Raises the failing check's own error (DataError, BackboneNotFoundError, ...) naming the key
    to fix; the report is logged either way.
    """
    report = run_preflight(cfg, build=get_federation)
    (log.info if report.ok else log.error)("%s", report.format())
    report.raise_first()


def run_server(grid: Grid, flat_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run (or resume) a whole federated experiment; returns the summary."""
    cfg = parse_app_config(flat_config)
    core, srv = cfg.core, cfg.server
    method = get_method(core.method.name)
    name = cfg.run_name
    preflight(cfg)
    run = RunDir.open(cfg.run.dir, name, cfg.to_flat(), cfg.run.resume)
    done = run.last_completed_round()
    if done is None:
        source = data_source(core.data)
        listed = source.federation() if source.server_lists else None
        write_run_manifest(core.data, listed, run.root)
        shared = initial_shared(core)
        run.save_checkpoint(0, shared)
        done = 0
        log.info("run %s: new experiment %s", name, run.experiment_id)
    else:
        run.truncate_after(done)
        shared = run.load_checkpoint(done)
        log.info("run %s: resuming after round %d (experiment %s)", name, done, run.experiment_id)

    strategy = SharedPromptFedAvg(
        {k: tuple(v.shape) for k, v in shared.items()},
        fp16_transport=srv.fp16_transport,
        max_norm_ratio=srv.max_norm_ratio,
        num_partitions=core.data.num_clients,
        max_examples_ratio=srv.max_examples_ratio,
        **expected_examples(core),
        fraction_train=srv.fraction_train,
        fraction_evaluate=srv.fraction_evaluate,
        min_train_nodes=srv.min_replies,
        min_evaluate_nodes=1,
        min_available_nodes=srv.min_nodes,
    )
    dp = dp_wrapper(cfg, strategy)
    pending = _pending_round(run)
    if pending is not None and (srv.eval_mode == "separate" or done >= srv.num_rounds):
        # Resumed without a next training round to carry it: evaluate that round by itself.
        fields = _evaluate_phase(grid, cfg, strategy, run, shared, pending, RoundTally())
        fields.pop("clients_ok")
        run.update_metrics(pending, {**fields, "evaluated": True, "evaluation": "separate"})
    for server_round in range(done + 1, srv.num_rounds + 1):
        shared = _round(grid, cfg, strategy, run, method.trains, shared, server_round, dp)

    rows = run.read_metrics()
    summary = summarise(rows, {"run": name, "experiment": run.experiment_id})
    run.write_summary(summary)
    curves = run.plot_curves()
    log.info("run %s finished: %s", name, {k: summary[k] for k in list(summary)[:5]})
    log.info("%s", summary_table(summary, cfg, run.root, curves))
    return summary


def dp_wrapper(cfg: AppConfig, strategy: SharedPromptFedAvg):
    """Flower's central-DP fixed-clipping wrapper around the strategy (server.dp), or None.

    ``server``: the server clips each update to L2 norm ``dp-clipping-norm`` (C) around the prompt
    it sent; ``client``: the ClientApp's fixedclipping_mod clips before sending. Either way the
    average gets Gaussian noise of std ``dp-noise-multiplier`` (z) x C / (clients sampled).
    num_sampled_clients is set per round to the number of training messages sent.
    """
    srv = cfg.server
    if srv.dp == "off" or not strategy.shared_shapes:
        return None
    cls = {
        "server": DifferentialPrivacyServerSideFixedClipping,
        "client": DifferentialPrivacyClientSideFixedClipping,
    }[srv.dp]
    return cls(strategy, srv.dp_noise_multiplier, srv.dp_clipping_norm, num_sampled_clients=1)


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


def _round(
    grid: Grid,
    cfg: AppConfig,
    strategy: SharedPromptFedAvg,
    run: RunDir,
    trains: bool,
    shared: dict[str, torch.Tensor],
    server_round: int,
    dp: Any = None,
) -> dict[str, torch.Tensor]:
    """One round: train phase, evaluation phase (every k rounds), then the round's record
    (checkpoint and metrics line); returns the new shared prompt.

    With ``server.eval-mode=fused`` the evaluation of round r's model rides in round r + 1's
    training messages (which carry that model anyway) and fills round r's line when the
    replies arrive; only the last round sends a separate evaluate message.
    """
    srv = cfg.server
    t0 = time.perf_counter()
    tally = RoundTally()
    record: dict[str, Any] = {"round": server_round, "train_loss": None}
    fused = srv.eval_mode == "fused" and trains
    if trains:  # also methods that share nothing (local training): they still train
        pending = _pending_round(run) if fused else None
        shared, train, evaluation = _train_phase(
            grid, cfg, strategy, dp, run, shared, server_round, tally, pending
        )
        record.update(train)
        if pending is not None and evaluation is not None:
            run.update_metrics(pending, evaluation)
    due = server_round % srv.eval_every == 0 or server_round == srv.num_rounds
    now = due and (not fused or server_round == srv.num_rounds)
    record.update(
        evaluated=now,
        evaluation=("fused-pending" if due and not now else srv.eval_mode) if due else None,
        personalised_accuracy=None,
        global_accuracy=None,
        global_eval=srv.global_eval if due else None,
    )
    if now:
        fields = _evaluate_phase(grid, cfg, strategy, run, shared, server_round, tally)
        record.setdefault("clients_ok", fields.pop("clients_ok"))  # the train phase's count wins
        record.update(fields)
    elif due and srv.global_eval == "server":  # needs no client: scored now
        record.update(_server_global_eval(cfg, shared))
    record.update(tally.metrics(srv.fp16_transport))
    run.save_checkpoint(server_round, shared)
    record["round_seconds"] = time.perf_counter() - t0
    run.append_metrics(record)
    log.info(
        "round %d: train_loss=%s personalised=%s global=%s ok=%s failed=%d rejected=%d (%.1fs)%s",
        server_round,
        record["train_loss"],
        record["personalised_accuracy"],
        record["global_accuracy"],
        record.get("clients_ok"),
        tally.failed,
        len(tally.rejected),
        record["round_seconds"],
        " (evaluated in the next round's messages)" if due and not now else "",
    )
    return shared


def _pending_round(run: RunDir) -> int | None:
    """The last round whose fused evaluation has not arrived yet (None: nothing pending)."""
    rows = run.read_metrics()
    if rows and rows[-1].get("evaluation") == "fused-pending":
        return int(rows[-1]["round"])
    return None


def _server_global_eval(cfg: AppConfig, shared: dict[str, torch.Tensor]) -> dict[str, Any]:
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


def _needs_zeroshot(run: RunDir) -> bool:
    """The frozen model's zero-shot accuracy is asked for once per run, with the first
    evaluation (the reference every later accuracy is compared with, on the same images)."""
    return not any(_finite(m.get("zeroshot_accuracy")) for m in run.read_metrics())


def _train_phase(
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
        if _needs_zeroshot(run):
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
        "clients_ok": rep.ok, "train_sent_at": sent_at, "train_received_at": received_at
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


def _evaluate_phase(
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
    if _needs_zeroshot(run):
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
        "clients_ok": rep.ok, "eval_sent_at": sent_at, "eval_received_at": received_at
    }
    if metrics is not None:
        fields.update(_eval_fields(metrics, srv.global_eval))
    if srv.global_eval == "server":
        fields.update(_server_global_eval(cfg, shared))
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
