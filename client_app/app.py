"""Flower ClientApp: private prompt on local disk, shared prompt from/to the server.

Thin adapter over task.federated.FederatedClient: decode the message, run the round, reply with
the shared tensors and metrics only. The private prompt is loaded from and saved to the store
under ``<private-dir>/<experiment>/client-<partition>/``; ``private-dir`` comes from the node config
(deployment: ``--node-config "private-dir='/data/private'"``) or else ``client.private-dir``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local dirs or already cached
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from flwr.app import Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from server_app.transport import ARRAYS, CONFIG, METRICS, from_record, to_record  # noqa: E402
from task.federated import FederatedClient, parse_app_config  # noqa: E402
from task.private_store import PrivateStore  # noqa: E402

app = ClientApp()

PRIVATE_DIR_KEY = "private-dir"


def _client(msg: Message, context: Context) -> tuple[FederatedClient, int, bool]:
    """The federated client for this node and the round the message belongs to."""
    cfg = parse_app_config(dict(context.run_config))
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError(
            "node config has no partition-id. Fix: start the SuperNode with "
            '--node-config "partition-id=N num-partitions=M"'
        )
    partition_id = int(node["partition-id"])
    config = msg.content.config_records[CONFIG]
    base = str(node.get(PRIVATE_DIR_KEY, "") or cfg.client.private_dir)
    store = PrivateStore(base, str(config["experiment"]), partition_id)
    client = FederatedClient(cfg.core, partition_id, store, progress=cfg.client.progress)
    return client, int(config["server-round"]), cfg.server.fp16_transport


def _shared(msg: Message) -> tuple[dict[str, torch.Tensor], bool]:
    record = msg.content.array_records.get(ARRAYS)
    tensors = from_record(record) if record is not None else {}
    fp16 = any(t.dtype == torch.float16 for t in tensors.values())
    return {k: v.float() for k, v in tensors.items()}, fp16


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally from the received shared prompt; reply with the shared tensors only."""
    client, server_round, _ = _client(msg, context)
    shared, fp16 = _shared(msg)
    new_shared, result = client.train(shared, server_round)
    metrics = {
        "num-examples": int(result.num_examples) or len(client.data.train),
        "train-loss": float(result.loss),
        "steps": int(result.steps),
        "partition-id": client.partition_id,
    }
    metrics.update({f"train-{k}": float(v) for k, v in result.parts.items() if k != "loss"})
    content = RecordDict({ARRAYS: to_record(new_shared, fp16=fp16), METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Personalised (shared + private) and shared-only accuracy on this client's test split."""
    client, server_round, _ = _client(msg, context)
    shared, _ = _shared(msg)
    res = client.evaluate(shared, server_round)
    metrics = {
        "num-examples": int(res.personalised.num_examples),
        "personalised-accuracy": float(res.personalised.accuracy),
        "personalised-loss": float(res.personalised.loss),
        "global-accuracy": float(res.global_.accuracy),
        "global-loss": float(res.global_.loss),
        "partition-id": client.partition_id,
        "private-round": -1 if res.private_round is None else int(res.private_round),
    }
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
