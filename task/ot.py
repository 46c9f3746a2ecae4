"""Entropic optimal transport between image patches and class prompt features, batched via POT.

For an image with patch features ``x_1..x_N`` (uniform mass 1/N) and a class with prompt
features ``t_1..t_M`` (uniform mass 1/M), the cost is ``C_ij = 1 - cos(x_i, t_j)`` and the plan
``T*`` solves ``min_T <T, C> - lambda H(T)`` under the two marginal constraints (Sinkhorn, in the
log domain, by ``ot.batch.solve_batch``). All images x classes are one batch of problems.

Gradients use the envelope theorem: the plan is computed without gradients and then held fixed,
which is the exact gradient of the entropic OT value ``W = <T*, C> - lambda H(T*)``
(checked with torch.autograd.gradcheck in tests/task/test_ot.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ot.batch import entropy_batch, loss_linear_batch, solve_batch


@dataclass
class OTResult:
    """Per (image, class) pair: OT similarity <T*, cos>, entropic OT value W, and the plan."""

    similarity: torch.Tensor  # [B, C]
    distance: torch.Tensor  # [B, C]: W = <T*, 1 - cos> - lambda H(T*)
    plan: torch.Tensor  # [B, C, N, M] (no gradient)


def sinkhorn_plan(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    """Entropic OT plans for a batch of cost matrices [K, N, M] with uniform marginals."""
    with torch.no_grad():
        result = solve_batch(
            cost.detach(),
            reg=reg,
            method="log_sinkhorn",
            max_iter=max_iter,
            tol=tol,
            grad="detach",
        )
    return result.plan


def patch_prompt_ot(
    patches: torch.Tensor,
    prompts: torch.Tensor,
    reg: float,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> OTResult:
    """OT between every image's patches [B, N, D] and every class's prompts [C, M, D].

    Features must be L2-normalised. Returns [B, C] similarities and distances whose gradients
    flow into both the patch and prompt features (through the cosine matrix only).
    """
    cos = torch.einsum("bnd,cmd->bcnm", patches, prompts)
    return _solve(cos, reg, max_iter, tol)


def paired_ot(
    patches: torch.Tensor,
    prompts: torch.Tensor,
    reg: float,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> OTResult:
    """OT between image b's patches [B, N, D] and its own prompt set [B, M, D] only ([B, 1])."""
    cos = torch.einsum("bnd,bmd->bnm", patches, prompts).unsqueeze(1)
    return _solve(cos, reg, max_iter, tol)


def _solve(cos: torch.Tensor, reg: float, max_iter: int, tol: float) -> OTResult:
    b, c, n, m = cos.shape
    cost = (1.0 - cos).reshape(b * c, n, m)
    if m == 1:  # one target point: the only feasible plan puts 1/N on every patch (exact)
        plan = torch.full_like(cost, 1.0 / n).detach()
        linear = loss_linear_batch(cost, plan)
        value = linear - reg * entropy_batch(plan)
        return OTResult((1.0 - linear).reshape(b, c), value.reshape(b, c), plan.reshape(b, c, n, m))
    solve_dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    plan = sinkhorn_plan(cost.to(solve_dtype), reg, max_iter, tol).to(cost.dtype)
    linear = loss_linear_batch(cost, plan)  # <T*, C>, differentiable in C
    value = linear - reg * entropy_batch(plan)
    return OTResult(
        similarity=(1.0 - linear).reshape(b, c),
        distance=value.reshape(b, c),
        plan=plan.reshape(b, c, n, m),
    )
