"""Entropic optimal transport between image patches and class prompt features, batched via POT.

For an image with patch features ``x_1..x_N`` (uniform mass 1/N) and a class with prompt
features ``t_1..t_M`` (uniform mass 1/M), the cost is ``C_ij = 1 - cos(x_i, t_j)`` and the plan
``T*`` solves ``min_T <T, C> - lambda H(T)`` under the two marginal constraints (Sinkhorn, in the
log domain, by ``ot.batch.solve_batch``). All images x classes are one batch of problems.

Gradients use the envelope theorem: the plan is computed without gradients and then held fixed,
which is the exact gradient of the entropic OT value ``W = <T*, C> - lambda H(T*)``
(checked with torch.autograd.gradcheck in tests/task/methods/test_ot.py).

Unbalanced option (``marginal_reg`` = rho > 0, FedOTP-style relaxation): the two marginal
constraints become KL penalties, ``min_T <T, C> + lambda sum T log T + rho KL~(T1 | a) +
rho KL~(T^T 1 | b)`` (KL~ the generalised KL). POT's unbalanced solvers are not batched, so
``unbalanced_sinkhorn_plan`` is a batched log-domain version of the same scaling iterations,
checked against ``ot.unbalanced.sinkhorn_unbalanced`` in tests/task/methods/test_baselines.py.
As rho -> inf it is the balanced problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class OTResult:
    """Per (image, class) pair: OT similarity <T*, cos>, entropic OT value W, and the plan."""

    similarity: torch.Tensor  # [B, C]
    distance: torch.Tensor  # [B, C]: W = <T*, 1 - cos> - lambda H(T*)
    plan: torch.Tensor  # [B, C, N, M] (no gradient)


def sinkhorn_plan(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    """Entropic OT plans for a batch of cost matrices [K, N, M] with uniform marginals."""
    with torch.no_grad():
        from ot.batch import solve_batch  # POT's import costs ~1 s: only where OT is solved

        result = solve_batch(
            cost.detach(),
            reg=reg,
            method="log_sinkhorn",
            max_iter=max_iter,
            tol=tol,
            grad="detach",
        )
    return result.plan


def two_point_plan(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    """Exact entropic OT plan for M = 2 targets with uniform marginals, via a 1-D dual root.

    With exact row marginals the plan is ``T_i0 = sigma(x + d_i) / N``, ``T_i1 = (1 - sigma) / N``
    with ``d_i = (C_i1 - C_i0) / lambda``; the column marginal fixes the single unknown x by
    ``mean_i sigma(x + d_i) = 1/2``, a monotone equation solved by safeguarded Newton (bisection
    inside the bracket [-max d, -min d]). Same solution Sinkhorn converges to, in a handful of
    vectorised iterations instead of dozens of small log-sum-exp reductions (tests compare the
    two; bench/local_step.py times them).
    """
    with torch.no_grad():
        d = (cost[..., 1] - cost[..., 0]).detach() / reg  # [K, N]
        lo, hi = -d.amax(dim=1), -d.amin(dim=1)
        x = -d.mean(dim=1)
        for _ in range(max_iter):
            s = torch.sigmoid(x[:, None] + d)
            f = s.mean(dim=1) - 0.5
            if float(f.abs().max()) < tol:
                break
            lo = torch.where(f < 0, x, lo)
            hi = torch.where(f > 0, x, hi)
            newton = x - f / (s * (1 - s)).mean(dim=1).clamp_min(1e-30)
            x = torch.where((newton > lo) & (newton < hi), newton, (lo + hi) / 2)
        s = torch.sigmoid(x[:, None] + d)
        return torch.stack([s, 1 - s], dim=-1) / d.shape[1]


def unbalanced_sinkhorn_plan(
    cost: torch.Tensor, reg: float, marginal_reg: float, max_iter: int, tol: float
) -> torch.Tensor:
    """Plans [K, N, M] of entropic OT with KL-relaxed uniform marginals (log domain).

    Minimises ``<T, C> + reg * sum T log T + rho * (KL~(T 1 | a) + KL~(T^T 1 | b))`` with
    ``a = 1/N``, ``b = 1/M``: ``T = exp(f_i + log K_ij + g_j)``, ``log K = -C/reg - 1``, and
    ``f <- rho/(rho+reg) * (log a - LSE_j(log K_ij + g_j))`` (same for g).
    """
    with torch.no_grad():
        _, n, m = cost.shape
        log_k = -cost.detach() / reg - 1.0
        log_a = torch.full(cost.shape[:2], -math.log(n), dtype=cost.dtype, device=cost.device)
        log_b = torch.full((cost.shape[0], m), -math.log(m), dtype=cost.dtype, device=cost.device)
        fi = marginal_reg / (marginal_reg + reg)
        f = torch.zeros_like(log_a)
        g = torch.zeros_like(log_b)
        for _ in range(max_iter):
            f_prev = f
            f = fi * (log_a - torch.logsumexp(log_k + g[:, None, :], dim=2))
            g = fi * (log_b - torch.logsumexp(log_k + f[:, :, None], dim=1))
            if float((f - f_prev).abs().max()) < tol:
                break
        return torch.exp(f[:, :, None] + log_k + g[:, None, :])


def generalised_kl(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-16) -> torch.Tensor:
    """Sum over the last axis of x log(x/y) - x + y (the KL between unnormalised measures)."""
    return (x * torch.log((x + eps) / y) - x + y).sum(dim=-1)


def patch_prompt_ot(
    patches: torch.Tensor,
    prompts: torch.Tensor,
    reg: float,
    max_iter: int = 100,
    tol: float = 1e-6,
    marginal_reg: float = 0.0,
    solver: str = "auto",
) -> OTResult:
    """OT between every image's patches [B, N, D] and every class's prompts [C, M, D].

    Features must be L2-normalised. Returns [B, C] similarities and distances whose gradients
    flow into both the patch and prompt features (through the cosine matrix only).
    ``marginal_reg`` > 0 relaxes the marginals (unbalanced OT); 0 keeps them exact.
    """
    cos = torch.einsum("bnd,cmd->bcnm", patches, prompts)
    return _solve(cos, reg, max_iter, tol, marginal_reg, solver)


def paired_ot(
    patches: torch.Tensor,
    prompts: torch.Tensor,
    reg: float,
    max_iter: int = 100,
    tol: float = 1e-6,
    marginal_reg: float = 0.0,
    solver: str = "auto",
) -> OTResult:
    """OT between image b's patches [B, N, D] and its own prompt set [B, M, D] only ([B, 1])."""
    cos = torch.einsum("bnd,bmd->bnm", patches, prompts).unsqueeze(1)
    return _solve(cos, reg, max_iter, tol, marginal_reg, solver)


def _solve(
    cos: torch.Tensor, reg: float, max_iter: int, tol: float, marginal_reg: float, solver: str
) -> OTResult:
    """``solver``: ``auto`` takes the exact shortcuts for M <= 2, ``pot`` always runs POT."""
    b, c, n, m = cos.shape
    cost = (1.0 - cos).reshape(b * c, n, m)
    if marginal_reg > 0:
        return _solve_unbalanced(cost, reg, max_iter, tol, marginal_reg, (b, c))
    solve_dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    if m == 1 and solver == "auto":  # the only feasible plan puts 1/N on every patch (exact)
        plan = torch.full_like(cost, 1.0 / n).detach()
    elif m == 2 and solver == "auto":
        plan = two_point_plan(cost.to(solve_dtype), reg, max_iter, tol).to(cost.dtype)
    else:
        plan = sinkhorn_plan(cost.to(solve_dtype), reg, max_iter, tol).to(cost.dtype)
    from ot.batch import entropy_batch, loss_linear_batch

    linear = loss_linear_batch(cost, plan)  # <T*, C>, differentiable in C
    value = linear - reg * entropy_batch(plan)
    return OTResult(
        similarity=(1.0 - linear).reshape(b, c),
        distance=value.reshape(b, c),
        plan=plan.reshape(b, c, n, m),
    )


def _solve_unbalanced(
    cost: torch.Tensor,
    reg: float,
    max_iter: int,
    tol: float,
    marginal_reg: float,
    shape: tuple[int, int],
) -> OTResult:
    """Unbalanced plans (held fixed); value includes the marginal penalties (envelope-exact)."""
    b, c = shape
    _, n, m = cost.shape
    solve_dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    plan = unbalanced_sinkhorn_plan(cost.to(solve_dtype), reg, marginal_reg, max_iter, tol)
    plan = plan.to(cost.dtype)
    from ot.batch import entropy_batch, loss_linear_batch

    linear = loss_linear_batch(cost, plan)
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)
    bb = torch.full((m,), 1.0 / m, dtype=cost.dtype, device=cost.device)
    penalty = generalised_kl(plan.sum(2), a) + generalised_kl(plan.sum(1), bb)
    value = linear - reg * entropy_batch(plan) + marginal_reg * penalty
    # The plan's mass is not 1: similarity is the mass-normalised mean cosine under the plan.
    mass = plan.sum(dim=(1, 2)).clamp(min=1e-12)
    similarity = (plan * (1.0 - cost)).sum(dim=(1, 2)) / mass
    return OTResult(similarity.reshape(b, c), value.reshape(b, c), plan.reshape(b, c, n, m))
