"""The server's round loop: train, aggregate, evaluate every k rounds, checkpoint, resume.

Flower's ``Strategy.start`` runs a fixed loop from round 1; a resumable run with a run directory,
evaluation cadence and byte accounting needs its own loop, so this drives the strategy's
configure/aggregate hooks itself over the Grid. It takes a Grid and a flat run config, so tests can
drive it in-process with a fake Grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from server_app.bindings import PartitionBindings
from server_app.experts import ExpertRouter
from server_app.phases import RoundTally, evaluate_phase, server_global_eval, train_phase
from server_app.progress import RunProgress
from server_app.strategy import SharedPromptFedAvg
from task.config import AppConfig, parse_app_config
from task.data.federation import write_run_manifest
from task.data.source import data_source, get_federation
from task.local.global_model import initial_shared
from task.locks import locked
from task.methods import get_method
from task.runs.preflight import run_preflight
from task.runs.run_dir import RunDir, summarise, summary_table

log = logging.getLogger(__name__)


def preflight(cfg: AppConfig) -> None:
    """task.runs.preflight before anything is written: data root, folder-to-class mapping,
    images per class, federation (built once, through the cached get_federation), model directory.

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
    get_method(cfg.core.method.name)
    preflight(cfg)
    # One ServerApp per run directory: a second one (the resume command run twice) stops here.
    with locked(Path(cfg.run.dir).expanduser() / cfg.run_name, "run directory"):
        run = RunDir.open(cfg.run.dir, cfg.run_name, cfg.to_flat(), cfg.run.resume)
        return _run(grid, cfg, run)


def _run(grid: Grid, cfg: AppConfig, run: RunDir) -> dict[str, Any]:
    core, srv, name = cfg.core, cfg.server, cfg.run_name
    method = get_method(core.method.name)
    done = run.last_completed_round()
    source = data_source(core.data)
    listed = source.federation() if source.server_lists else None
    if done is None:
        write_run_manifest(core.data, listed, run.root)
        shared = initial_shared(core)
        run.save_checkpoint(0, shared)
        done = 0
        log.info("run %s: new experiment %s", name, run.experiment_id)
    else:
        run.truncate_after(done)
        shared = run.load_checkpoint(done)
        log.info("run %s: resuming after round %d (experiment %s)", name, done, run.experiment_id)

    bindings = PartitionBindings(run.root)
    bindings.adopt(grid.get_node_ids())
    strategy = SharedPromptFedAvg(
        {k: tuple(v.shape) for k, v in shared.items()},
        fp16_transport=srv.fp16_transport,
        max_norm_ratio=srv.max_norm_ratio,
        num_partitions=core.data.num_clients,
        max_examples_ratio=srv.max_examples_ratio,
        limits=source.example_limits(core.train.epochs),
        max_update_norm=srv.update_norm_cap,
        bindings=bindings,
        aggregation=(srv.aggregation, srv.trim_fraction, srv.krum_byzantine),
        fraction_train=srv.fraction_train,
        fraction_evaluate=srv.fraction_evaluate,
        min_train_nodes=srv.replies_needed,
        min_evaluate_nodes=1,
        min_available_nodes=srv.min_nodes,
    )
    dp = dp_wrapper(cfg, strategy)
    progress = RunProgress(run.root, done + 1, srv.num_rounds, cfg.run.tensorboard)
    router = expert_router(cfg, run, grid, done, shared)
    pending = _pending_round(run)
    if pending is not None and (srv.eval_mode == "separate" or done >= srv.num_rounds):
        # Resumed without a next training round to carry it: evaluate that round by itself.
        fields = evaluate_phase(grid, cfg, strategy, run, shared, pending, RoundTally(), router)
        fields.pop("clients_ok")
        run.update_metrics(pending, {**fields, "evaluated": True, "evaluation": "separate"})
        log.info("%s", progress.evaluated(pending, fields))
    if done == 0 and done < srv.num_rounds and method.uses_cached_features and method.trains:
        images = sum(len(c.train) + len(c.test) for c in listed.clients) if listed else None
        progress.announce_features(images, core.cache.dir, core.model.name)
    server = ServerRound(grid, cfg, strategy, dp, run, progress, method.trains, router)
    for server_round in range(done + 1, srv.num_rounds + 1):
        shared = server.round(shared, server_round)
    progress.close()

    rows = run.read_metrics()
    summary = summarise(rows, {"run": name, "experiment": run.experiment_id})
    run.write_summary(summary)
    curves = run.plot_curves()
    log.info("run %s finished: %s", name, {k: summary[k] for k in list(summary)[:5]})
    log.info("%s", summary_table(summary, cfg, run.root, curves))
    return summary


def expert_router(
    cfg: AppConfig, run: RunDir, grid: Grid, done: int, shared: dict[str, torch.Tensor]
) -> ExpertRouter | None:
    """pFedMoAP's per-node experts (None for every method that sends all clients the same)."""
    count = get_method(cfg.core.method.name).expert_count(cfg.core.prompt)
    if count <= 0:
        return None
    (key,) = shared  # the one shared prompt: every client's latest is an expert for the others
    router = ExpertRouter(run, count, key, cfg.server.fp16_transport)
    router.resume(done)
    router.learn_nodes(grid, cfg.server.timeout)
    return router


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
class ServerRound:
    """What every round of a run works with (built once by run_server)."""

    grid: Grid
    cfg: AppConfig
    strategy: SharedPromptFedAvg
    dp: Any
    run: RunDir
    progress: RunProgress
    trains: bool
    router: ExpertRouter | None = None

    def round(self, shared: dict[str, torch.Tensor], server_round: int) -> dict[str, torch.Tensor]:
        """One round: train phase, evaluation phase (every k rounds), then the round's record
        (checkpoint and metrics line); returns the new shared prompt.

        With ``server.eval-mode=fused`` the evaluation of round r's model rides in round
        r + 1's training messages (which carry that model anyway) and fills round r's line when
        the replies arrive; only the last round sends a separate evaluate message.
        """
        cfg, run, srv = self.cfg, self.run, self.cfg.server
        t0 = time.perf_counter()
        tally = RoundTally()
        record: dict[str, Any] = {"round": server_round, "train_loss": None}
        fused = srv.eval_mode == "fused" and self.trains
        arrived = None  # the log text of an evaluation that arrived in this round
        if self.trains:  # also methods that share nothing (local training): they still train
            pending = _pending_round(run) if fused else None
            shared, train, evaluation = train_phase(
                self.grid,
                cfg,
                self.strategy,
                self.dp,
                run,
                shared,
                server_round,
                tally,
                pending,
                self.router,
                self.progress.reply_counter(server_round),
            )
            record.update(train)
            if pending is not None and evaluation is not None:
                run.update_metrics(pending, evaluation)
                if evaluation.get("evaluated"):
                    arrived = self.progress.evaluated(pending, evaluation)
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
            fields = evaluate_phase(
                self.grid, cfg, self.strategy, run, shared, server_round, tally, self.router
            )
            record.setdefault("clients_ok", fields.pop("clients_ok"))  # train phase's count wins
            record.update(fields)
        elif due and srv.global_eval == "server":  # needs no client: scored now
            record.update(server_global_eval(cfg, shared))
        record.update(tally.metrics(srv.fp16_transport))
        run.save_checkpoint(server_round, shared)
        record["round_seconds"] = time.perf_counter() - t0
        run.append_metrics(record)
        if now:
            arrived = " | ".join(
                filter(None, [arrived, self.progress.evaluated(server_round, record)])
            )
        self.progress.round_done(record, arrived, tally)
        return shared


def _pending_round(run: RunDir) -> int | None:
    """The last round whose fused evaluation has not arrived yet (None: nothing pending)."""
    rows = run.read_metrics()
    if rows and rows[-1].get("evaluation") == "fused-pending":
        return int(rows[-1]["round"])
    return None
