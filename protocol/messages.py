"""Tensors <-> Flower records, and the serialised size of messages (communication accounting).

Shared by the ServerApp and the ClientApp so both sides agree on the record layout (the record
names and every key: protocol.keys; the replies' metrics: protocol.replies):
``content["arrays"]`` (ArrayRecord, shared tensors only), ``content["config"]`` (ConfigRecord,
server -> client), ``content["metrics"]`` (MetricRecord, client -> server).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto


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
