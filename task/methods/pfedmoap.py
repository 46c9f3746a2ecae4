"""``pfedmoap`` (pFedMoAP, ICLR 2025, "Mixture of Experts Made Personalized: Federated Prompt
Learning for Vision-Language Models"): each client trains one prompt, starting every round from
the average of all clients' prompts, and combines it with other clients' prompts ("experts",
downloaded frozen) through a small attention gate of its own over the image feature
(docs/method.md §5.7).

    logits = λ τ g·t_c  +  τ pool(g) · Attn(q = pool(g), k = v = [pool(t_c); pool(e_1c) ...])

``pool`` keeps every k-th feature dimension (k = D // ``prompt.gate-dim``), ``Attn`` is multi-head
attention (``prompt.gate-heads`` heads, scores scaled by ``prompt.gate-scaling``) whose four
projections are the gate's only weights. The server picks each client's experts: the
``prompt.experts`` - 1 other clients whose latest prompt is nearest (L2) to this client's latest
one, sent in that client's own message (``expert_ctx``).

Privacy differs from the other methods, as the paper declares: a client's trained prompt is its
upload (the shared set), so the server holds every client's latest prompt and other clients
receive it as an expert. Only the gate (and the client's copy of its own prompt, packed with it
in the private store) never leaves the node.

Where ours differs from the authors' code: the prompt trains with the run's optimiser (the same
for every method), theirs with SGD at lr 0.002; the gate has its own SGD as theirs (lr
``prompt.gate-lr``, 0.01), a fresh one each round (theirs is one optimiser whose momentum
carries across rounds and clients); the gate's declared dropout is never applied there and is
not here; evaluation of round r uses the experts sent with the next message (the others'
round-r prompts), theirs the ones the client trained with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from task.config import PromptConfig
from task.methods.base import Method

EXPERT_KEY = "expert_ctx"  # server -> client: [K - 1, h, W] the experts chosen for this client


class ExpertGate(nn.Module):
    """Multi-head attention from the (pooled) image feature over each class's experts."""

    def __init__(self, dim: int, heads: int, scaling: float, seed: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"prompt.gate-dim {dim} is not divisible by prompt.gate-heads {heads}")
        self.dim, self.heads, self.scaling = dim, heads, float(scaling)
        generator = torch.Generator().manual_seed(seed)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        with torch.no_grad():  # nn.Linear's default init, from our own generator (reproducible)
            for layer in (self.q, self.k, self.v, self.o):
                bound = 1.0 / math.sqrt(dim)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, query: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """``query`` [B, d] (pooled image features), ``experts`` [C, E, d] (pooled class
        features of each expert, own prompt first) -> [B, C, d] mixed class features."""
        b, (c, e, d) = query.shape[0], experts.shape
        h, dk = self.heads, d // self.heads
        q = self.q(query).view(b, h, dk)  # the same query for every class
        k = self.k(experts).view(c, e, h, dk)
        v = self.v(experts).view(c, e, h, dk)
        scores = torch.einsum("bhd,cehd->bche", q, k) * self.scaling
        mixed = torch.einsum("bche,cehd->bchd", scores.softmax(dim=-1), v)
        return self.o(mixed.reshape(b, c, d))


def pool(features: torch.Tensor, dim: int) -> torch.Tensor:
    """Every k-th feature (k = D // dim), as the authors reduce CLIP's 512/1024 to the gate's."""
    stride = max(1, features.shape[-1] // dim)
    return features[..., ::stride][..., :dim]


def gate_width(feature_dim: int, dim: int) -> int:
    """The pooled width the gate works in (``dim``, or less for a narrower model)."""
    return min(dim, len(range(0, feature_dim, max(1, feature_dim // dim))))


def moe_logits(
    image_global: torch.Tensor,
    own: torch.Tensor,
    experts: torch.Tensor | None,
    gate: ExpertGate | None,
    logit_scale: float,
    lam: float,
) -> torch.Tensor:
    """λ τ g·t_c + τ pool(g)·Attn(pool(g), [pool(t_c); pool(experts)]); the local logits alone
    (τ g·t_c) while the client has no experts or no gate yet (its first round)."""
    local = logit_scale * image_global @ own.t()
    if experts is None or gate is None or len(experts) == 0:
        return local
    d = gate.dim
    stack = torch.cat([pool(own, d).unsqueeze(1), pool(experts, d).transpose(0, 1)], dim=1)
    query = pool(image_global, d)
    mixed = gate(query, stack)  # [B, C, d]
    return lam * local + logit_scale * torch.einsum("bd,bcd->bc", query, mixed)


# The authors' gate optimiser (their OPTIMGATING: SGD, constant lr 0.01, Dassl's momentum and
# weight decay): the run's optimiser (AdamW at 0.01 in recipe=standin) moves the attention
# weights ~lr per step whatever their gradient, which is not the method's.
GATE_MOMENTUM, GATE_WEIGHT_DECAY = 0.9, 5e-4


def gate_optimizer(gate: ExpertGate, lr: float) -> torch.optim.Optimizer:
    """The gate's own SGD (``prompt.gate-lr``); a fresh one each round, as the prompt's."""
    return torch.optim.SGD(
        gate.parameters(), lr=lr, momentum=GATE_MOMENTUM, weight_decay=GATE_WEIGHT_DECAY
    )


def gate_numel(dim: int) -> int:
    return 4 * (dim * dim + dim)


def pack(own: torch.Tensor, gate: ExpertGate | None) -> torch.Tensor:
    """The private state in one tensor: [own prompt (h x W) ; the gate's weights, or nothing]."""
    parts = [own.detach().flatten()]
    if gate is not None:
        parts += [p.detach().flatten() for p in gate.parameters()]
    return torch.cat(parts).float().cpu()


def unpack(
    state: torch.Tensor, shape: tuple[int, int], gate: ExpertGate
) -> tuple[torch.Tensor, ExpertGate | None]:
    """(own prompt, the gate loaded with its weights, or None when none was kept yet)."""
    n = shape[0] * shape[1]
    if state.ndim != 1 or state.numel() not in (n, n + gate_numel(gate.dim)):
        raise ValueError(
            f"pfedmoap private state has {tuple(state.shape)}, expected [{n}] or "
            f"[{n + gate_numel(gate.dim)}] (prompt {shape}, gate dim {gate.dim})"
        )
    own = state[:n].view(shape).clone()
    if state.numel() == n:
        return own, None
    offset = n
    with torch.no_grad():
        for p in gate.parameters():
            p.copy_(state[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    return own, gate


def nearest_experts(latest: Mapping[int, torch.Tensor], partition: int, count: int) -> list[int]:
    """The ``count`` other partitions whose latest prompt is nearest (L2) to ``partition``'s
    (ties by partition id); none before ``partition`` has uploaded one (its first round)."""
    if partition not in latest or count <= 0:
        return []
    own = latest[partition].float()
    others = sorted(p for p in latest if p != partition)
    dist = {p: float((latest[p].float() - own).norm()) for p in others}
    return sorted(others, key=lambda p: (dist[p], p))[:count]


@dataclass(frozen=True)
class PFedMoAP(Method):
    client_kind: ClassVar[str] = "moe"

    @property
    def private_keys(self) -> tuple[str, ...]:
        return ("private_ctx",)  # the packed [own prompt; gate], never sent

    def expert_count(self, prompt: PromptConfig) -> int:
        """Experts a client receives: ``prompt.experts`` - 1 (its own prompt is one of them)."""
        return max(0, prompt.experts - 1)

    def learner_kwargs(self, prompt: PromptConfig, personal: bool = True) -> dict[str, object]:
        # The prompt it trains is its upload: one "shared" prompt, no private prompt tensor.
        return {"with_shared": True, "with_private": False, "private_rank": 0, "fusion": None}


PFEDMOAP = PFedMoAP(
    "pfedmoap",
    has_private=True,
    head="clip",
    global_ce=False,
    description="own prompt + other clients' prompts as experts, mixed by a local attention gate",
)

__all__ = [
    "EXPERT_KEY",
    "PFEDMOAP",
    "ExpertGate",
    "gate_optimizer",
    "gate_width",
    "moe_logits",
    "nearest_experts",
    "pack",
    "pool",
    "unpack",
]
