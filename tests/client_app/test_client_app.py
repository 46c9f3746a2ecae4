"""ClientApp handlers called directly: private prompt on disk, shared-only replies."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from flwr.app import (
    DEFAULT_TTL,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    RecordDict,
)

from client_app.app import app
from task.config import parse_app_config
from task.local.global_model import initial_shared
from task.local.private_store import PrivateStore
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config


def _message(kind: str, shared: dict, server_round: int, fp16: bool = False) -> Message:
    dtype = torch.float16 if fp16 else torch.float32
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: v.to(dtype) for k, v in shared.items()}),
            "config": ConfigRecord({"experiment": "exp", "server-round": server_round}),
        }
    )
    meta = Metadata(
        run_id=1,
        message_id=f"{kind}{server_round}",
        src_node_id=0,
        dst_node_id=5,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=kind,
    )
    return Message(content=content, metadata=meta)


@pytest.fixture
def setup(tmp_path: Path, tiny_clip_dir: Path):
    images = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=8)
    cfg = tiny_run_config(tmp_path, tiny_clip_dir, images)
    node = {"partition-id": 1, "num-partitions": 3, "private-dir": str(tmp_path / "node-store")}
    ctx = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config=cfg)
    shared = initial_shared(parse_app_config(cfg).core)
    return tmp_path, ctx, shared


def test_train_saves_private_and_replies_with_shared_only(setup) -> None:
    tmp, ctx, shared = setup
    reply = app(_message(MessageType.TRAIN, shared, 1), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    keys = {k for rec in reply.content.array_records.values() for k in rec}
    assert keys == {"shared_ctx"}
    assert reply.content["metrics"]["num-examples"] > 0
    # The node config's private-dir wins over client.private-dir (deployment).
    store = PrivateStore(tmp / "node-store", "exp", 1)
    assert store.rounds() == [1]
    assert not (tmp / "private").exists()
    new = reply.content["arrays"].to_torch_state_dict()["shared_ctx"]
    assert not torch.equal(new, shared["shared_ctx"])

    ev = app(_message(MessageType.EVALUATE, {"shared_ctx": new}, 1), ctx)
    m = ev.content["metrics"]
    assert not ev.content.array_records
    assert m["private-round"] == 1 and 0 <= m["personalised-accuracy"] <= 1


def test_fp16_in_fp16_out(setup) -> None:
    _, ctx, shared = setup
    reply = app(_message(MessageType.TRAIN, shared, 1, fp16=True), ctx)
    out = reply.content["arrays"]["shared_ctx"]
    assert out.dtype == "float16"
    assert len(out.numpy().tobytes()) == shared["shared_ctx"].numel() * 2


def test_missing_partition_id_is_a_clear_error(setup) -> None:
    _, ctx, shared = setup
    ctx.node_config = {}
    with pytest.raises(ValueError, match="partition-id"):
        app(_message(MessageType.TRAIN, shared, 1), ctx)
