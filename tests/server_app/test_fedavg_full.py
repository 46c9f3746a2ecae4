"""fedavg-full end to end: the real ServerApp loop and ClientApp over an in-process grid.

Three clients fine-tune the tiny random CLIP's whole image encoder plus a linear head for two
rounds on synthetic images. Checks what the baseline is for: the payload is the whole encoder +
head (x 4 bytes, x 2 with fp16 transport), the global model is the example-weighted average of the
replies, accuracy is reported, and the frozen backbone and the private store are never touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import MessageType
from safetensors.torch import load_file

from client_app.app import app as client_app
from protocol.messages import from_record, to_record
from server_app.loop import run_server
from task.config import parse_app_config
from task.data.source import run_class_names
from task.methods.fedavg_full import build_full_model
from task.model.backbone import get_backbone
from testkit.grid import InProcessGrid, task_identity
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config


def _config(tmp: Path, model_dir: Path, **overrides) -> dict:
    images = write_synthetic_images(tmp / "images", TINY_CLASSES, per_class=8)
    return tiny_run_config(
        tmp,
        model_dir,
        images,
        **{
            "method.name": "fedavg-full",
            "data.partitioner": "even",  # similar sizes: no update is a norm outlier
            "train.optimizer": "adamw",
            "train.lr": 1e-3,
            "train.batch-size": 4,
            **overrides,
        },
    )


def _run(cfg: dict) -> tuple[InProcessGrid, dict]:
    grid = InProcessGrid(client_app, cfg, 3)
    with task_identity():
        summary = run_server(grid, cfg)
    return grid, summary


def _rows(cfg: dict) -> list[dict]:
    path = Path(cfg["run.dir"]) / cfg["run.name"] / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _checkpoint(cfg: dict, server_round: int) -> dict[str, torch.Tensor]:
    path = Path(cfg["run.dir"]) / cfg["run.name"] / "checkpoints"
    return load_file(str(path / f"global-r{server_round:05d}.safetensors"))


def _encoder_and_head_numel(backbone) -> int:
    """Counted from the frozen CLIP, independently of the method registry."""
    clip = backbone.model
    encoder = sum(p.numel() for p in clip.vision_model.parameters())
    encoder += sum(p.numel() for p in clip.visual_projection.parameters())
    classes = len(TINY_CLASSES)
    return encoder + clip.config.projection_dim * classes + classes


def _train_replies(grid: InProcessGrid, server_round: int) -> list:
    """The replies to round ``server_round``'s training messages (the grid records each message
    and its reply in the same order; FedAvg puts the round in the message's config)."""
    return [
        reply
        for msg, reply in zip(grid.sent, grid.replies, strict=True)
        if msg.metadata.message_type == MessageType.TRAIN
        and msg.content["config"]["server-round"] == server_round
    ]


def _weighted_average(replies: list) -> dict[str, torch.Tensor]:
    states = [
        (from_record(r.content["arrays"]), float(r.content["metrics"]["num-examples"]))
        for r in replies
    ]
    total = sum(n for _, n in states)
    return {
        k: sum(s[k].to(torch.float64) * (n / total) for s, n in states).to(torch.float32)
        for k in states[0][0]
    }


@pytest.mark.slow
def test_two_rounds_of_fedavg_full(tmp_path: Path, tiny_clip_dir: Path) -> None:
    cfg = _config(tmp_path, tiny_clip_dir)
    backbone = get_backbone(parse_app_config(cfg).core.model)
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    grid, summary = _run(cfg)

    assert summary["final_round"] == 2
    rows = _rows(cfg)
    n = _encoder_and_head_numel(backbone)
    classes = run_class_names(parse_app_config(cfg).core.data)  # the federation's label order
    model = build_full_model(backbone, classes)
    assert n == sum(p.numel() for p in model.parameters())
    for row in rows:
        assert row["clients_ok"] == 3 and row["clients_failed"] == 0
        assert row["replies_rejected"] == 0
        assert row["shared_payload_bytes"] == 4 * n  # the whole encoder + head, fp32
        # every message carries the whole model (plus a little framing) each way
        assert row["bytes_from_clients"] >= 3 * 4 * n
        # Fused evaluation: round r's model is evaluated inside round r+1's training message,
        # so only the last round sends a separate evaluate message (again the whole model).
        messages = 3 * (2 if row["round"] == summary["final_round"] else 1)
        assert messages * 4 * n <= row["bytes_to_clients"] <= messages * 4 * n * 1.1
        assert set(row["reply_array_keys"]) == set(model.state_dict())
        acc = row["personalised_accuracy"]
        assert 0.0 <= acc <= 1.0 and row["global_accuracy"] == acc  # nothing private
        assert len(row["per_client"]) == 3
        for c in row["per_client"].values():
            assert c["num_test"] > 0 and 0.0 <= c["global_accuracy"] <= 1.0
            assert c["personalised_accuracy"] == c["global_accuracy"]

    # Round 0 is the deterministic zero-shot-initialised model; round r is the example-weighted
    # average of round r's replies.
    r0 = _checkpoint(cfg, 0)
    assert r0.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(r0[k], v.cpu()), k
    sent = _train_replies(grid, 1)
    assert len(sent) == 3
    expected = _weighted_average(sent)
    r1 = _checkpoint(cfg, 1)
    assert r1.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(r1[k], expected[k], rtol=0, atol=1e-6)
    assert any(not torch.equal(r1[k], r0[k]) for k in r0)  # training moved the model
    assert any(not torch.equal(r1[k], r0[k]) for k in r0 if k.startswith("vision_model."))
    # Round 2's training started from round 1's global model.
    round2 = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN][3:]
    assert len(round2) == 3 and all(m.content["config"]["server-round"] == 2 for m in round2)
    for k, v in from_record(round2[0].content["arrays"]).items():
        assert torch.equal(v, r1[k]), k

    # The frozen backbone (text tower included) is untouched; nothing private, no feature cache.
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert not (tmp_path / "private").exists()
    assert not (tmp_path / "features").exists()


@pytest.mark.slow
def test_fedavg_full_fp16_transport_and_server_side_global_eval(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    cfg = _config(
        tmp_path,
        tiny_clip_dir,
        **{
            "server.num-rounds": 1,
            "server.fp16-transport": True,
            "server.global-eval": "server",
        },
    )
    grid, _ = _run(cfg)
    backbone = get_backbone(parse_app_config(cfg).core.model)
    n = _encoder_and_head_numel(backbone)
    (row,) = _rows(cfg)
    assert row["clients_ok"] == 3 and row["replies_rejected"] == 0
    assert row["shared_payload_bytes"] == 2 * n
    assert 0.0 <= row["global_accuracy"] <= 1.0 and 0.0 <= row["personalised_accuracy"] <= 1.0
    sent = _train_replies(grid, 1)
    for reply in sent:
        assert all(t.dtype == torch.float16 for t in from_record(reply.content["arrays"]).values())
    r1 = _checkpoint(cfg, 1)  # averaged in float64, stored in fp32
    expected = _weighted_average(sent)
    for k in expected:
        assert r1[k].dtype == torch.float32
        torch.testing.assert_close(r1[k], expected[k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_fedavg_full_replies_are_validated(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """The same reply checks as for prompts: a NaN in the encoder and an absurd update norm are
    each rejected; the global model is the one honest reply."""
    cfg = _config(tmp_path, tiny_clip_dir, **{"server.num-rounds": 1, "server.min-replies": 1})
    nodes = InProcessGrid(client_app, cfg, 3).node_ids

    def tamper(dst: int, reply):
        if reply.metadata.message_type != MessageType.TRAIN:
            return reply
        arrays = reply.content["arrays"]
        tensors = from_record(arrays)
        key = "vision_model.encoder.layers.0.mlp.fc1.weight"
        if dst == nodes[0]:
            tensors[key][0, 0] = float("nan")
        elif dst == nodes[1]:
            tensors[key] += 100.0  # far outside the round's update norms
        else:
            return reply
        reply.content["arrays"] = to_record(tensors)
        return reply

    grid = InProcessGrid(client_app, cfg, 3, tamper=tamper)
    with task_identity():
        run_server(grid, cfg)
    (row,) = _rows(cfg)
    assert row["clients_ok"] == 1 and row["replies_rejected"] == 2
    reasons = " | ".join(r["reason"] for r in row["rejected"])
    assert "non-finite" in reasons and "update norm" in reasons
    (honest_reply,) = [r for r in _train_replies(grid, 1) if r.metadata.src_node_id == nodes[2]]
    honest = from_record(honest_reply.content["arrays"])
    r1 = _checkpoint(cfg, 1)
    for k, v in honest.items():
        assert torch.equal(r1[k], v), k
