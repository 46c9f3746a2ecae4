"""Tensors <-> Flower records, and the serialised size of messages (communication accounting).

Shared by the ServerApp and the ClientApp so both sides agree on the record layout:
``content["arrays"]`` (ArrayRecord, shared tensors only), ``content["config"]`` (ConfigRecord,
server -> client), ``content["metrics"]`` (MetricRecord, client -> server).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
ZEROSHOT_KEY = "zeroshot"  # evaluate config: also report the frozen zero-shot accuracy
# Fused evaluation (server.eval-mode=fused): a train message whose config holds EVALUATE_ROUND
# = r (>= 1) asks the client to evaluate the model it carries (round r's aggregate, with the
# private prompt saved at the end of round r) before training; the evaluation goes back in the
# train reply's EVAL_METRICS record, with the keys of an evaluate reply's METRICS.
EVALUATE_ROUND = "evaluate-round"
EVAL_METRICS = "eval-metrics"


def to_record(tensors: Mapping[str, torch.Tensor], fp16: bool = False) -> ArrayRecord:
    """An ArrayRecord of the given tensors, float16 on the wire when ``fp16``."""
    dtype = torch.float16 if fp16 else torch.float32
    return ArrayRecord({k: v.detach().cpu().to(dtype).contiguous() for k, v in tensors.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The tensors of an ArrayRecord, dtype kept (validation checks it)."""
    return {k: torch.from_numpy(record[k].numpy().copy()) for k in record}


def content_bytes(msg: Message) -> int:
    """Serialised size of a message's content (records with their array payloads)."""
    if not msg.has_content():
        return 0
    return int(recorddict_to_proto(msg.content).ByteSize())


def payload_bytes(content: RecordDict) -> int:
    """Raw tensor bytes in the message's array records (numel x itemsize)."""
    total = 0
    for record in content.array_records.values():
        for key in record:
            arr = record[key].numpy()
            total += int(arr.size * arr.itemsize)
    return total
