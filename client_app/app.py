"""Flower ClientApp: private prompt on local disk, shared prompt from/to the server.

Thin adapter over task.local.client (make_client): decode the message, run the round, reply
with the shared tensors and the typed metrics of protocol.replies only. For
``method.name=fedavg-full`` the "shared tensors" are the whole image encoder + linear head
(trained on raw images; nothing private, nothing cached).

The private prompt is loaded from and saved to the store under
``<private-dir>/<experiment>/client-<partition>/``; ``private-dir`` comes from the node config
(deployment: ``--node-config "private-dir='/data/private'"``) or else ``client.private-dir``;
likewise the node config's ``cache-dir`` overrides ``cache.dir`` (the frozen feature cache), and
``data-root`` names the node's own ``<root>/<class>/<image>`` folder: with
``data.partitioner=local`` it is the node's whole partition (required), otherwise it replaces
``data.root`` on this node (its own copy of the shared dataset, e.g. at another path).

With ``server.dp = "client"`` the server's DP wrapper puts a clipping norm in the train config and
Flower's ``fixedclipping_mod`` clips this client's shared-prompt update before it is sent.
Test-only fault injection is a mod in testkit.faults, added only when ``FEDRSCLIP_FAULT`` is set.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

from client_app import timeline  # before torch and transformers: marks when importing began

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local dirs or already cached
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


import torch  # noqa: E402
from flwr.app import Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.typing import Mod  # noqa: E402

from client_app.mods import assemble, env_mods  # noqa: E402
from protocol.appcode import app_digest, code_location  # noqa: E402
from protocol.keys import (  # noqa: E402
    APP_DIGEST,
    ARRAYS,
    CONFIG,
    DATA_ROOT,
    EVAL_METRICS,
    EVALUATE_ROUND,
    EXPERIMENT,
    METRICS,
    PARTITION_ID,
    SERVER_ROUND,
    ZEROSHOT,
)
from protocol.messages import from_record, to_record  # noqa: E402
from protocol.replies import EvalReply, TrainReply  # noqa: E402
from task.config import apply_node_config, parse_app_config  # noqa: E402
from task.local.client import ClientEval, FederatedClient  # noqa: E402
from task.local.kinds import make_client  # noqa: E402
from task.local.private_store import PrivateStore  # noqa: E402
from task.locks import locked  # noqa: E402


def _client(msg: Message, context: Context) -> tuple[FederatedClient, int]:
    """The federated client for this node and the round the message belongs to."""
    node = context.node_config
    if PARTITION_ID not in node:
        raise ValueError(
            "node config has no partition-id. Fix: start the SuperNode with "
            '--node-config "partition-id=N num-partitions=M"'
        )
    partition_id = int(node[PARTITION_ID])
    cfg = apply_node_config(parse_app_config(dict(context.run_config)), node)
    _quiet(cfg.client.verbose)
    config = msg.content.config_records[CONFIG]
    _same_code(config.get(APP_DIGEST))
    server_round = int(config[SERVER_ROUND])
    if server_round < 1 or int(config.get(EVALUATE_ROUND, 1)) < -1:
        raise ValueError(f"the server sent round {server_round}: rounds start at 1")
    store = PrivateStore(
        cfg.client.private_dir, str(config[EXPERIMENT]), partition_id, cfg.client.on_corrupt
    )
    client = make_client(
        cfg.core,
        partition_id,
        store,
        progress=cfg.client.progress,
        on_corrupt=cfg.client.on_corrupt,
        data_root=str(node.get(DATA_ROOT, "") or ""),
    )
    return client, server_round


def _store_lock(client: FederatedClient) -> contextlib.AbstractContextManager:
    """This client's private store, held for the whole message (two ClientApps must never
    interleave one partition's private prompts); nothing to hold for a method without one."""
    if not client.method.private_keys:
        return contextlib.nullcontext()
    return locked(client.store.dir, "private store")


def _same_code(server_digest: object) -> None:
    """Refuse to serve a ServerApp that runs other code (protocol.appcode explains how)."""
    if server_digest is None or server_digest == app_digest():
        return
    raise RuntimeError(
        f"this ClientApp runs other code (digest {app_digest()}, modules from "
        f"{code_location()}) than the ServerApp ({server_digest}). In a simulation the clients "
        "import the directory the local SuperLink was started from: stop it (e.g. `pkill -f "
        "flower-superlink`) and start the run again from the app's own directory; on a "
        "SuperNode, reinstall the app it was sent"
    )


def _quiet(verbose: bool) -> None:
    """Without client.verbose, the libraries' progress bars (transformers' "Loading weights"
    bar, one per actor and round in simulation) and their warnings are off."""
    if verbose:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _timings(
    client: FederatedClient, t0: float, c0: float, handler_started: float
) -> dict[str, float]:
    """Where this reply's time went: loading the backbone (first message of a process), image
    features (cache load or extraction) and the rest (wall seconds), the CPU seconds this
    process used (which other jobs on a shared machine inflate far less than wall time), and
    the process's wall-clock marks (client_app.timeline)."""
    total = time.perf_counter() - t0
    setup = client.backbone_seconds
    return {
        "time-total": total,
        "time-backbone": setup,
        "time-features": client.feature_seconds,
        "time-compute": total - client.feature_seconds - setup,
        "time-cpu": time.process_time() - c0,
        **timeline.marks(handler_started),
    }


def _shared(msg: Message) -> tuple[dict[str, torch.Tensor], bool]:
    record = msg.content.array_records.get(ARRAYS)
    tensors = from_record(record) if record is not None else {}
    bad = sorted(k for k, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise ValueError(f"the server sent non-finite tensors {bad}: refusing to train on them")
    fp16 = any(t.dtype == torch.float16 for t in tensors.values())
    return {k: v.float() for k, v in tensors.items()}, fp16


def train(msg: Message, context: Context) -> Message:
    """Train locally from the received shared prompt; reply with the shared tensors only.

    Fused evaluation: when the config names an ``evaluate-round`` r, the received model (round
    r's aggregate) is first evaluated, with the private prompt as saved at the end of round r,
    exactly as a separate evaluate message would; the result rides in the same reply.
    """
    started, t0, c0 = time.time(), time.perf_counter(), time.process_time()
    client, server_round = _client(msg, context)
    with _store_lock(client):
        return _train(msg, client, server_round, started, t0, c0)


def _train(
    msg: Message, client: FederatedClient, server_round: int, started: float, t0: float, c0: float
) -> Message:
    shared, fp16 = _shared(msg)
    config = msg.content.config_records[CONFIG]
    records = {}
    evaluate_round = int(config.get(EVALUATE_ROUND, -1))
    if evaluate_round >= 1:
        te, ce = time.perf_counter(), time.process_time()
        res = client.evaluate(shared, evaluate_round, bool(config.get(ZEROSHOT, False)))
        records[EVAL_METRICS] = MetricRecord(_eval_metrics(client, res, te, ce, started))
        client.feature_seconds = client.backbone_seconds = 0.0  # train timings start afresh
        t0, c0 = time.perf_counter(), time.process_time()
    new_shared, result = client.train(shared, server_round)
    reply = TrainReply(
        partition_id=client.partition_id,
        num_examples=int(result.num_examples) or len(client.data.train),
        train_loss=float(result.loss),
        steps=int(result.steps),
        parts={k: float(v) for k, v in result.parts.items() if k != "loss"},
        timings=_timings(client, t0, c0, started),
    )
    content = RecordDict(
        {
            ARRAYS: to_record(new_shared, fp16=fp16),
            METRICS: MetricRecord(reply.to_metrics()),
            **records,
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Personalised (shared + private) and shared-only accuracy on this client's test split."""
    started, t0, c0 = time.time(), time.perf_counter(), time.process_time()
    client, server_round = _client(msg, context)
    shared, _ = _shared(msg)
    with_zeroshot = bool(msg.content.config_records[CONFIG].get(ZEROSHOT, False))
    with _store_lock(client):
        res = client.evaluate(shared, server_round, with_zeroshot)
    metrics = _eval_metrics(client, res, t0, c0, started)
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def _eval_metrics(
    client: FederatedClient, res: ClientEval, t0: float, c0: float, started: float
) -> dict:
    reply = EvalReply(
        partition_id=client.partition_id,
        num_examples=int(res.personalised.num_examples),
        personalised_accuracy=float(res.personalised.accuracy),
        personalised_loss=float(res.personalised.loss),
        global_accuracy=float(res.global_.accuracy),
        global_loss=float(res.global_.loss),
        global_num_examples=int(res.global_.num_examples),
        private_round=-1 if res.private_round is None else int(res.private_round),
        zeroshot_accuracy=None if res.zeroshot is None else float(res.zeroshot.accuracy),
        timings=_timings(client, t0, c0, started),
    )
    return reply.to_metrics()


def query(msg: Message, context: Context) -> Message:
    """Which partition this node holds (its node config): a server that sends each node its
    own content (pFedMoAP's experts) asks once when it resumes a run."""
    pid = context.node_config.get(PARTITION_ID)
    if isinstance(pid, bool) or not isinstance(pid, int | str):
        raise ValueError("node config has no partition-id")
    return Message(RecordDict({METRICS: MetricRecord({PARTITION_ID: int(pid)})}), reply_to=msg)


def build_app(extra_mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp with this module's handlers (``extra_mods``: e.g. testkit.faults)."""
    return assemble(train, evaluate, query, extra_mods)


app = build_app(env_mods())
timeline.imports_done = time.time()
