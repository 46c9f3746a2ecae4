"""pFedMoAP: the gate against a plain reference, expert choice, the private state, and a run:
per-node experts after round 1, nothing private sent, and an exact resume on new node ids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from client_app.app import app as client_app
from server_app.loop import run_server
from task.methods.pfedmoap import (
    EXPERT_KEY,
    ExpertGate,
    gate_numel,
    gate_width,
    moe_logits,
    nearest_experts,
    pack,
    pool,
    unpack,
)
from testkit.grid import InProcessGrid, task_identity
from tests.reliability.helpers import client_dir, setup_run


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _reference_gate(gate: ExpertGate, query: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """The authors' shapes, one class at a time: Q [B, d] against that class's E experts."""
    out = []
    h, dk = gate.heads, gate.dim // gate.heads
    for c in range(experts.shape[0]):
        q = gate.q(query).view(-1, h, dk).transpose(0, 1)  # [h, B, dk]
        k = gate.k(experts[c]).view(-1, h, dk).transpose(0, 1)  # [h, E, dk]
        v = gate.v(experts[c]).view(-1, h, dk).transpose(0, 1)
        attn = torch.softmax(q @ k.transpose(1, 2) * gate.scaling, dim=-1)  # [h, B, E]
        out.append(gate.o((attn @ v).transpose(0, 1).reshape(len(query), gate.dim)))
    return torch.stack(out, dim=1)  # [B, C, d]


def test_gate_matches_per_class_attention_and_logits_mix_as_declared():
    gate = ExpertGate(16, 4, 10.0, seed=3)
    query, experts = _unit(5, 16, seed=1), _unit(7, 3, 16, seed=2)  # B = 5, C = 7, E = 3
    torch.testing.assert_close(gate(query, experts), _reference_gate(gate, query, experts))
    image, own, others = _unit(5, 32, seed=4), _unit(7, 32, seed=5), _unit(2, 7, 32, seed=6)
    width = gate_width(32, 16)
    assert width == 16 and pool(own, 16).shape == (7, 16)
    gate = ExpertGate(width, 4, 10.0, seed=3)
    local = 20.0 * image @ own.t()
    assert torch.equal(moe_logits(image, own, None, gate, 20.0, 0.5), local)  # no experts yet
    got = moe_logits(image, own, others, gate, 20.0, 0.5)
    stack = torch.cat([pool(own, 16).unsqueeze(1), pool(others, 16).transpose(0, 1)], dim=1)
    mixed = _reference_gate(gate, pool(image, 16), stack)
    want = 0.5 * local + 20.0 * torch.einsum("bd,bcd->bc", pool(image, 16), mixed)
    torch.testing.assert_close(got, want)


def test_nearest_experts_and_the_packed_state():
    latest = {
        0: torch.zeros(2, 3),
        1: torch.full((2, 3), 3.0),
        2: torch.ones(2, 3),
        3: -torch.ones(2, 3),
    }
    assert nearest_experts(latest, 0, 2) == [2, 3]  # both at distance sqrt(6): by partition id
    assert nearest_experts(latest, 1, 1) == [2]
    assert nearest_experts(latest, 9, 3) == []  # no prompt of its own yet: no experts
    gate = ExpertGate(8, 2, 10.0, seed=0)
    own = torch.randn(2, 3)
    state = pack(own, gate)
    assert state.shape == (6 + gate_numel(8),)
    fresh = ExpertGate(8, 2, 10.0, seed=1)
    back, loaded = unpack(state, (2, 3), fresh)
    assert torch.equal(back, own)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.parameters(), gate.parameters(), strict=True)
    )
    assert unpack(pack(own, None), (2, 3), fresh)[1] is None
    with pytest.raises(ValueError, match="private state"):
        unpack(torch.zeros(7), (2, 3), fresh)


def _grid(cfg: dict, first: int = 101, fail_after: int | None = None) -> InProcessGrid:
    grid = InProcessGrid(client_app, cfg, 3, first_node_id=first, fail_after=fail_after)
    with task_identity():
        run_server(grid, cfg)
    return grid


def _rows(cfg: dict) -> list[dict]:
    path = Path(cfg["run.dir"]) / cfg["run.name"] / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_run_sends_each_node_its_experts_and_resumes_exactly(tmp_path, tiny_clip_dir):
    base = setup_run(tmp_path, tiny_clip_dir, **{"method.name": "pfedmoap", "prompt.experts": 2,
                                                   "server.num-rounds": 3})  # fmt: skip
    grid = _grid({**base, "run.name": "straight"})
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all(EXPERT_KEY not in m.content["arrays"] for m in trains[:3])  # round 1: none yet
    for m in trains[3:]:
        experts = m.content["arrays"][EXPERT_KEY].numpy()
        assert experts.shape[0] == 1  # prompt.experts - 1
    for reply in grid.replies:  # only the trained prompt goes back: the gate never leaves
        assert set(reply.content.array_records.get("arrays", {})) <= {"shared_ctx"}
    store = sorted(p.name for p in client_dir({**base, "run.name": "straight"}, 0).iterdir())
    assert store == ["private-r00002.safetensors", "private-r00003.safetensors"]
    ref = _rows({**base, "run.name": "straight"})
    assert all(math.isfinite(r["train_loss"]) for r in ref)

    # The same experiment interrupted in round 3 and resumed by a federation with new node ids:
    # the server asks each node its partition and sends what it sent before.
    cfg = {**base, "run.name": "resumed"}
    _grid({**cfg, "server.num-rounds": 2})
    with pytest.raises(KeyboardInterrupt):
        _grid(cfg, first=500, fail_after=1)
    resumed = _grid(cfg, first=900)
    assert [m.metadata.message_type for m in resumed.sent][:3] == ["query"] * 3
    got = _rows(cfg)
    keys = ("round", "train_loss", "personalised_accuracy", "global_accuracy")
    assert [[r.get(k) for k in keys] for r in got] == [[r.get(k) for k in keys] for r in ref]
