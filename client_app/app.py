"""Flower ClientApp: private prompt on local disk, shared prompt from/to the server.

Thin adapter over task.local.client (make_client): decode the message, run the round, reply with
the shared tensors and metrics only. For ``method.name=fedavg-full`` the "shared tensors" are the
whole image encoder + linear head (trained on raw images; nothing private, nothing cached).

The private prompt is loaded from and saved to the store under
``<private-dir>/<experiment>/client-<partition>/``; ``private-dir`` comes from the node config
(deployment: ``--node-config "private-dir='/data/private'"``) or else ``client.private-dir``;
likewise the node config's ``cache-dir`` overrides ``cache.dir`` (the frozen feature cache), and
``data-root`` names the node's own ``<root>/<class>/<image>`` folder: with
``data.partitioner=local`` it is the node's whole partition (required), otherwise it replaces
``data.root`` on this node (its own copy of the shared dataset, e.g. at another path).

With ``server.dp = "client"`` the server's DP wrapper puts a clipping norm in the train config and
Flower's ``fixedclipping_mod`` clips this client's shared-prompt update before it is sent.

Fault injection (tests only): ``FEDRSCLIP_FAULT="stage:partition:round[,...]"`` in the ClientApp's
environment makes it fail on purpose: stage ``train`` raises before training, ``save`` raises
after the new private prompt was fully written to a temporary file but before it replaces the
last good one (a crash mid-write); ``*`` matches any partition or round.
"""

from __future__ import annotations

import os
import time

from client_app import timeline  # before torch and transformers: marks when importing began

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local dirs or already cached
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


import torch  # noqa: E402
from flwr.app import Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.mod import fixedclipping_mod  # noqa: E402
from flwr.clientapp.typing import ClientAppCallable  # noqa: E402
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM  # noqa: E402

from protocol.messages import (  # noqa: E402
    ARRAYS,
    CONFIG,
    EVAL_METRICS,
    EVALUATE_ROUND,
    METRICS,
    ZEROSHOT_KEY,
    from_record,
    to_record,
)
from task.config import apply_node_config, parse_app_config  # noqa: E402
from task.local.client import ClientEval, FederatedClient, make_client  # noqa: E402
from task.local.private_store import PrivateStore  # noqa: E402

DATA_ROOT_KEY = "data-root"  # also the node's whole partition with data.partitioner=local
FAULT_ENV = "FEDRSCLIP_FAULT"


class InjectedFault(RuntimeError):
    """Raised on purpose by the FEDRSCLIP_FAULT test hook."""


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod, for train messages that carry a clipping norm (server.dp =
    "client"); every other message passes through untouched."""
    if msg.metadata.message_type == MessageType.TRAIN and msg.has_content():
        configs = msg.content.config_records.values()
        if any(KEY_CLIPPING_NORM in c for c in configs):
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[dp_clipping_mod])
timeline.imports_done = time.time()


def _faults(stage: str, partition_id: int, server_round: int) -> bool:
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"{FAULT_ENV} item {item!r} is not stage:partition:round")
        s, p, r = parts
        if s == stage and p in ("*", str(partition_id)) and r in ("*", str(server_round)):
            return True
    return False


def _client(msg: Message, context: Context) -> tuple[FederatedClient, int, bool]:
    """The federated client for this node and the round the message belongs to."""
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError(
            "node config has no partition-id. Fix: start the SuperNode with "
            '--node-config "partition-id=N num-partitions=M"'
        )
    partition_id = int(node["partition-id"])
    cfg = apply_node_config(parse_app_config(dict(context.run_config)), node)
    config = msg.content.config_records[CONFIG]
    server_round = int(config["server-round"])
    store = PrivateStore(
        cfg.client.private_dir, str(config["experiment"]), partition_id, cfg.client.on_corrupt
    )
    if _faults("save", partition_id, server_round):

        def crash(tmp: object) -> None:
            raise InjectedFault(f"injected fault: crash before saving {tmp} (FEDRSCLIP_FAULT)")

        store.before_replace = crash
    client = make_client(
        cfg.core,
        partition_id,
        store,
        progress=cfg.client.progress,
        on_corrupt=cfg.client.on_corrupt,
        data_root=str(node.get(DATA_ROOT_KEY, "") or ""),
    )
    return client, server_round, cfg.server.fp16_transport


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
    fp16 = any(t.dtype == torch.float16 for t in tensors.values())
    return {k: v.float() for k, v in tensors.items()}, fp16


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally from the received shared prompt; reply with the shared tensors only.

    Fused evaluation: when the config names an ``evaluate-round`` r, the received model (round
    r's aggregate) is first evaluated, with the private prompt as saved at the end of round r,
    exactly as a separate evaluate message would; the result rides in the same reply.
    """
    started, t0, c0 = time.time(), time.perf_counter(), time.process_time()
    client, server_round, _ = _client(msg, context)
    if _faults("train", client.partition_id, server_round):
        raise InjectedFault(f"injected fault: client {client.partition_id} train (FEDRSCLIP_FAULT)")
    if _faults("hang", client.partition_id, server_round):
        _hang(client.partition_id, server_round)
    shared, fp16 = _shared(msg)
    config = msg.content.config_records[CONFIG]
    records = {}
    evaluate_round = int(config.get(EVALUATE_ROUND, -1))
    if evaluate_round >= 1:
        te, ce = time.perf_counter(), time.process_time()
        res = client.evaluate(shared, evaluate_round, bool(config.get(ZEROSHOT_KEY, False)))
        records[EVAL_METRICS] = MetricRecord(_eval_metrics(client, res, te, ce, started))
        client.feature_seconds = client.backbone_seconds = 0.0  # train timings start afresh
        t0, c0 = time.perf_counter(), time.process_time()
    new_shared, result = client.train(shared, server_round)
    metrics = {
        "num-examples": int(result.num_examples) or len(client.data.train),
        "train-loss": float(result.loss),
        "steps": int(result.steps),
        "partition-id": client.partition_id,
    }
    metrics.update({f"train-{k}": float(v) for k, v in result.parts.items() if k != "loss"})
    metrics.update(_timings(client, t0, c0, started))
    content = RecordDict(
        {ARRAYS: to_record(new_shared, fp16=fp16), METRICS: MetricRecord(metrics), **records}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Personalised (shared + private) and shared-only accuracy on this client's test split."""
    started, t0, c0 = time.time(), time.perf_counter(), time.process_time()
    client, server_round, _ = _client(msg, context)
    shared, _ = _shared(msg)
    with_zeroshot = bool(msg.content.config_records[CONFIG].get(ZEROSHOT_KEY, False))
    res = client.evaluate(shared, server_round, with_zeroshot)
    metrics = _eval_metrics(client, res, t0, c0, started)
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def _eval_metrics(
    client: FederatedClient, res: ClientEval, t0: float, c0: float, started: float
) -> dict:
    metrics = {
        "num-examples": int(res.personalised.num_examples),
        "personalised-accuracy": float(res.personalised.accuracy),
        "personalised-loss": float(res.personalised.loss),
        "global-accuracy": float(res.global_.accuracy),
        "global-loss": float(res.global_.loss),
        "global-num-examples": int(res.global_.num_examples),
        "partition-id": client.partition_id,
        "private-round": -1 if res.private_round is None else int(res.private_round),
    }
    if res.zeroshot is not None:
        metrics["zeroshot-accuracy"] = float(res.zeroshot.accuracy)
    metrics.update(_timings(client, t0, c0, started))
    return metrics


FAULT_MARKER_ENV = "FEDRSCLIP_FAULT_MARKER"
FAULT_HANG_ENV = "FEDRSCLIP_FAULT_HANG_S"


def _hang(partition_id: int, server_round: int) -> None:
    """Fault stage ``hang`` (tests only): this ClientApp has set up its round (config, private
    store) and stops making progress, so a test can kill its SuperNode while it "trains".

    Writes ``<FEDRSCLIP_FAULT_MARKER>/hang-p<partition>-r<round>`` (holding this process id) when
    that variable names a directory, then sleeps ``FEDRSCLIP_FAULT_HANG_S`` seconds (default 600)
    and carries on training normally.
    """
    import time

    marker_dir = os.environ.get(FAULT_MARKER_ENV, "")
    if marker_dir:
        marker = os.path.join(marker_dir, f"hang-p{partition_id}-r{server_round}")
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
    time.sleep(float(os.environ.get(FAULT_HANG_ENV, "600")))
