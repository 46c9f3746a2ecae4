"""fedavg-full pieces: the round-0 model, strict loading, the ClientApp's replies, precision and
corrupt images (the in-process federation is in tests/server_app/test_fedavg_full.py)."""

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
from task.config import ModelConfig, TrainConfig, parse_app_config
from task.data.records import CorruptImageError, ImageRecord
from task.data.source import run_class_names
from task.local.global_model import initial_shared
from task.local.train_full import evaluate_full, train_full
from task.methods import get_method, shared_numel
from task.methods.fedavg_full import build_full_model, initial_state, load_full_model
from task.model.backbone import get_backbone, load_backbone
from task.model.zeroshot import zeroshot_features
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config


def _records(root: Path, per_class: int = 2) -> list[ImageRecord]:
    return [
        ImageRecord(f"{c}/{p.name}", str(p), label)
        for label, c in enumerate(TINY_CLASSES)
        for p in sorted((root / c).glob("*.png"))[:per_class]
    ]


def test_initial_state_is_deterministic_zeroshot(tiny_backbone) -> None:
    a = initial_state(tiny_backbone, TINY_CLASSES)
    b = initial_state(tiny_backbone, TINY_CLASSES)
    model = build_full_model(tiny_backbone, TINY_CLASSES)
    assert a.keys() == b.keys() == set(get_method("fedavg-full").shared_keys_for(model))
    for k in a:
        assert a[k].dtype == torch.float32 and a[k].device.type == "cpu"
        assert torch.equal(a[k], b[k]), k
    text = zeroshot_features(tiny_backbone, TINY_CLASSES).shared
    torch.testing.assert_close(a["head.weight"], text * tiny_backbone.logit_scale)
    assert not a["head.bias"].any()
    # The encoder starts as the frozen CLIP's own.
    clip = tiny_backbone.model.state_dict()
    for k in ("vision_model.embeddings.patch_embedding.weight", "visual_projection.weight"):
        assert torch.equal(a[k], clip[k]), k


def test_load_full_model_is_strict(tiny_backbone) -> None:
    state = initial_state(tiny_backbone, TINY_CLASSES)
    model = load_full_model(tiny_backbone, TINY_CLASSES, state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="missing"):
        load_full_model(
            tiny_backbone, TINY_CLASSES, {k: v for k, v in state.items() if k != "head.bias"}
        )
    with pytest.raises(ValueError, match="unexpected"):
        load_full_model(tiny_backbone, TINY_CLASSES, {**state, "private_ctx": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        load_full_model(tiny_backbone, TINY_CLASSES, {**state, "head.bias": torch.zeros(3)})


def _message(kind: str, shared: dict, server_round: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: v.float() for k, v in shared.items()}),
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


def test_client_sends_exactly_the_declared_tensors(tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=6)
    cfg = tiny_run_config(
        tmp_path, tiny_clip_dir, images, **{"method.name": "fedavg-full", "train.batch-size": 4}
    )
    node = {"partition-id": 1, "num-partitions": 3, "private-dir": str(tmp_path / "node-store")}
    ctx = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config=cfg)
    core = parse_app_config(cfg).core
    shared = initial_shared(core)
    backbone = get_backbone(core.model)
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = build_full_model(backbone, run_class_names(core.data))
    declared = get_method("fedavg-full").shared_keys_for(model)
    assert set(shared) == set(declared) and sum(v.numel() for v in shared.values()) == (
        shared_numel(get_method("fedavg-full"), model)
    )

    reply = app(_message(MessageType.TRAIN, shared, 1), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert set(reply.content.array_records) == {"arrays"}
    sent = reply.content["arrays"].to_torch_state_dict()
    assert set(sent) == set(declared)
    for k, v in sent.items():
        assert v.shape == shared[k].shape and v.dtype == torch.float32, k
    assert any(not torch.equal(sent[k], shared[k]) for k in declared)  # it trained
    m = reply.content["metrics"]
    assert m["num-examples"] > 0 and m["steps"] > 0 and m["train-loss"] == m["train-ce"]

    ev = app(_message(MessageType.EVALUATE, sent, 1), ctx)
    assert not ev.has_error(), ev.error.reason if ev.has_error() else ""
    assert not ev.content.array_records
    m = ev.content["metrics"]
    assert m["personalised-accuracy"] == m["global-accuracy"]  # nothing private
    assert m["num-examples"] == m["global-num-examples"] > 0 and m["private-round"] == -1

    # A server state that does not match the model (extra or missing tensor) is refused.
    with pytest.raises(ValueError, match="unexpected"):
        app(_message(MessageType.TRAIN, {**shared, "extra": torch.zeros(2)}, 2), ctx)
    with pytest.raises(ValueError, match="missing"):
        app(_message(MessageType.TRAIN, {k: shared[k] for k in declared[1:]}, 2), ctx)

    # Nothing private on disk, no feature cache; the frozen CLIP (text tower too) is unchanged.
    assert not (tmp_path / "node-store").exists() and not (tmp_path / "private").exists()
    assert not (tmp_path / "features").exists()
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_bfloat16_compute_keeps_fp32_parameters(tiny_clip_dir: Path, synthetic_image_root) -> None:
    backbone = load_backbone(ModelConfig(name=str(tiny_clip_dir), device="cpu", dtype="bfloat16"))
    model = build_full_model(backbone, TINY_CLASSES)
    assert model.compute_dtype == torch.bfloat16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = _records(synthetic_image_root)
    res = train_full(model, backbone, records, TrainConfig(batch_size=5, lr=1e-3), seed=0)
    assert res.steps == 2 and torch.isfinite(torch.tensor(res.loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ev = evaluate_full(model, backbone, records)
    assert ev.num_examples == len(records) and 0.0 <= ev.accuracy <= 1.0


def test_corrupt_images_raise_or_are_skipped(tiny_backbone, synthetic_image_root) -> None:
    records = _records(synthetic_image_root)
    bad = synthetic_image_root / "broken.png"
    bad.write_bytes(b"not a png")
    records = [*records, ImageRecord("broken.png", str(bad), 0)]
    model = build_full_model(tiny_backbone, TINY_CLASSES)
    cfg = TrainConfig(batch_size=4, lr=1e-3)
    with pytest.raises(CorruptImageError):
        train_full(model, tiny_backbone, records, cfg, seed=0)
    res = train_full(model, tiny_backbone, records, cfg, seed=0, skip_corrupt=True)
    assert res.num_examples == len(records) - 1
    ev = evaluate_full(model, tiny_backbone, records, skip_corrupt=True)
    assert ev.num_examples == len(records) - 1
