"""Privacy: every message a client sends is inspected, byte for byte, and carries neither private
prompts, image features nor raw data; optional central DP (Flower's fixed-clipping wrappers, server-
or client-side clipping) works with the shared-only strategy (issue 8)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from flwr.app import Message
from flwr.common.serde import recorddict_to_proto
from safetensors import safe_open
from safetensors.torch import load_file

from tests.reliability.helpers import rows, run, setup_run

REPLY_METRIC_KEYS = {
    "num-examples", "train-loss", "steps", "partition-id", "personalised-accuracy",
    "personalised-loss", "global-accuracy", "global-loss", "global-num-examples", "private-round",
    "time-total", "time-features", "time-compute", "time-cpu",  # seconds, for bench.simulation
    "time-backbone",  # seconds loading the frozen model in this process
    "zeroshot-accuracy",  # the frozen model's accuracy on the same test split (once per run)
    # wall-clock marks of the ClientApp process (the time line of a deployment round)
    "at-process-start", "at-imports-start", "at-imports-done", "at-handler-start", "at-reply",
}  # fmt: skip
REPLY_METRIC_RECORDS = {"metrics", "eval-metrics"}  # eval-metrics: fused evaluation


def _secrets(tmp: Path, cfg: dict) -> dict[str, list[bytes]]:
    """Byte strings that must never appear in anything a client sends."""
    out: dict[str, list[bytes]] = {"private": [], "features": [], "images": [], "paths": []}
    for f in Path(cfg["client.private-dir"]).rglob("private-r*.safetensors"):
        t = load_file(str(f))["private"]
        out["private"] += [row.contiguous().numpy().tobytes() for row in t.reshape(-1, t.shape[-1])]
        out["private"] += [row.half().numpy().tobytes() for row in t.reshape(-1, t.shape[-1])]
    for f in Path(cfg["cache.dir"]).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():  # noqa: SIM118 (safe_open API)
                t = h.get_tensor(name)
                out["features"] += [
                    r.contiguous().numpy().tobytes() for r in t.reshape(-1, t.shape[-1])
                ]
    for img in Path(cfg["data.root"]).rglob("*.png"):
        data = img.read_bytes()
        out["images"] += [data[i : i + 64] for i in range(0, len(data) - 64, 256)]
        out["paths"].append(img.name.encode())
    out["paths"] += [str(tmp).encode(), b"private-r0", b"client-", b".safetensors"]
    for cls in ("river", "beach", "forest", "farm", "port"):
        out["paths"].append(cls.encode())
    assert all(out.values()), {k: len(v) for k, v in out.items()}
    return out


def _check_reply(msg: Message, secrets: dict[str, list[bytes]], shared_numel: int) -> None:
    assert not msg.has_error(), msg.error
    content = msg.content
    assert not content.config_records, "a client must not send config records"
    for name, rec in content.array_records.items():
        assert name == "arrays" and list(rec) == ["shared_ctx"], (name, list(rec))
        assert rec["shared_ctx"].numpy().size == shared_numel
    assert set(content.metric_records) <= REPLY_METRIC_RECORDS, list(content.metric_records)
    for rec in content.metric_records.values():
        assert set(rec) <= REPLY_METRIC_KEYS | {k for k in rec if k.startswith("train-")}
        assert all(isinstance(v, int | float) for v in rec.values())
    wire = recorddict_to_proto(content).SerializeToString()
    # The allowed key names themselves are not secrets ("at-imports-start" holds "port").
    for key in sorted({k for rec in content.metric_records.values() for k in rec}, key=len)[::-1]:
        wire = wire.replace(key.encode(), b"")
    for kind, needles in secrets.items():
        for needle in needles:
            assert needle not in wire, f"{kind} bytes found in a {msg.metadata.message_type} reply"
    # No room for anything else: the shared prompt plus a few hundred bytes of metadata.
    assert len(wire) <= shared_numel * 4 + 1024


@pytest.mark.slow
def test_no_private_prompt_feature_or_raw_data_leaves_a_client(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 2})
    grid = run(cfg)
    secrets = _secrets(tmp_path, cfg)
    # 3 clients x (2 train + the last round's evaluate): round 1's evaluation is fused into
    # round 2's train reply, whose metrics _check_reply holds to the same allow-list.
    assert len(grid.replies) == 9
    assert [m.metadata.message_type for m in grid.replies].count("evaluate") == 3
    ckpt = load_file(
        str(Path(cfg["run.dir"]) / "tiny" / "checkpoints" / "global-r00000.safetensors")
    )
    numel = ckpt["shared_ctx"].numel()
    for msg in grid.replies:
        _check_reply(msg, secrets, numel)
    # The private prompts exist, differ from the shared one, and were used (evaluation says so).
    assert secrets["private"] and all(r["reply_array_keys"] == ["shared_ctx"] for r in rows(cfg))


def _delta_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm())


@pytest.mark.slow
def test_central_dp_client_side_clipping(tmp_path: Path, tiny_clip_dir: Path) -> None:
    clip = 1e-3
    cfg = setup_run(
        tmp_path,
        tiny_clip_dir,
        **{
            "server.num-rounds": 1,
            "server.dp": "client",
            "server.dp-clipping-norm": clip,
            "server.dp-noise-multiplier": 0.5,
        },
    )
    grid = run(cfg)
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    sent = trains[0].content["arrays"].to_torch_state_dict()["shared_ctx"]
    assert all(m.content["config"]["clipping_norm"] == clip for m in trains)
    updates = [
        m.content["arrays"].to_torch_state_dict()["shared_ctx"]
        for m in grid.replies
        if m.content.array_records
    ]
    assert len(updates) == 3
    for u in updates:  # clipped on the client by Flower's fixedclipping_mod before sending
        assert _delta_norm(u, sent) <= clip * (1 + 1e-4)
    (r,) = rows(cfg)
    assert r["clients_ok"] == 3 and r["replies_rejected"] == 0 and math.isfinite(r["train_loss"])
    ckpt = Path(cfg["run.dir"]) / "tiny" / "checkpoints"
    new = load_file(str(ckpt / "global-r00001.safetensors"))["shared_ctx"]
    # Noise std z * C / m was added to the clipped average.
    assert 0 < _delta_norm(new, sent) < 10 * clip * math.sqrt(new.numel())


@pytest.mark.slow
def test_central_dp_server_side_clipping_is_seeded(tmp_path: Path, tiny_clip_dir: Path) -> None:
    dp = {
        "server.num-rounds": 1,
        "server.eval-every": 5,
        "server.dp": "server",
        "server.dp-clipping-norm": 1e-3,
        "server.dp-noise-multiplier": 0.0,
    }
    cfg = setup_run(tmp_path, tiny_clip_dir, **dp)
    grid = run(cfg)
    sent = grid.sent[0].content["arrays"].to_torch_state_dict()["shared_ctx"]
    ckpt = Path(cfg["run.dir"]) / "tiny" / "checkpoints" / "global-r00001.safetensors"
    new = load_file(str(ckpt))["shared_ctx"]
    # Without noise the aggregate of updates clipped to C moves at most C.
    assert 0 < _delta_norm(new, sent) <= 1e-3 * (1 + 1e-4)
    assert rows(cfg)[0]["clients_ok"] == 3
    # With noise: the same seed gives the same noisy prompt (a resumed run replays it exactly).
    noisy = []
    for name in ("n1", "n2"):
        c = {**cfg, **{"server.dp-noise-multiplier": 1.0, "run.name": name}}
        run(c)
        noisy.append(load_file(str(Path(c["run.dir"]) / name / "checkpoints" / ckpt.name)))
    assert torch.equal(noisy[0]["shared_ctx"], noisy[1]["shared_ctx"])
    assert not torch.equal(noisy[0]["shared_ctx"], new)


@pytest.mark.slow
def test_pfedmoap_shares_its_prompt_and_keeps_its_gate(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """pFedMoAP declares each client's trained prompt shared (the server averages it and sends it
    to other clients as an expert); the attention gate never leaves the node."""
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 3, "method.name": "pfedmoap"})
    grid = run(cfg)
    numel = load_file(
        str(Path(cfg["run.dir"]) / "tiny" / "checkpoints" / "global-r00000.safetensors")
    )["shared_ctx"].numel()
    gates = []
    for f in Path(cfg["client.private-dir"]).rglob("private-r*.safetensors"):
        state = load_file(str(f))["private"]
        gate = state[numel:]
        if gate.numel():
            gates += [gate[i : i + 16].contiguous().numpy().tobytes() for i in range(0, 256, 16)]
    assert gates, "no client kept a gate"
    secrets = {**_secrets(tmp_path, cfg), "private": gates}
    for msg in grid.replies:
        if msg.metadata.message_type == "query":
            continue
        _check_reply(msg, secrets, numel)
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert any("expert_ctx" in m.content["arrays"] for m in sent)  # others' prompts, declared
