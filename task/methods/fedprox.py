"""``fedprox`` (FedProx): PromptFL plus the proximal term ``(mu/2) ||S - S_global||^2`` that keeps
each client's shared prompt near the round's global one (``loss.prox-mu``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from task.config import LossConfig
from task.methods.base import Method, Penalty
from task.model.prompts import PromptLearner


def proximal_term(
    params: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """FedProx: (1/2) sum_k ||params[k] - global[k]||^2 (times mu by the caller)."""
    total = None
    for key, value in params.items():
        diff = value - global_state[key].to(value.device, value.dtype).detach()
        term = 0.5 * (diff * diff).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("the proximal term needs at least one shared tensor")
    return total


@dataclass(frozen=True)
class FedProx(Method):
    def parameter_penalty(
        self,
        learner: PromptLearner,
        loss_cfg: LossConfig,
        global_state: Mapping[str, torch.Tensor] | None,
    ) -> Penalty | None:
        """``global_state``: the round's global shared tensors, the anchor of the term. When
        omitted it is the learner's shared tensors as they are now, which is the round's global
        prompt whenever the caller has just loaded the server's state."""
        if loss_cfg.prox_mu <= 0:
            return None
        named = dict(learner.named_parameters())
        source = global_state if global_state is not None else named
        missing = [k for k in self.shared_keys if k not in source]
        if missing:
            raise ValueError(f"FedProx needs the global {missing} in global_state")
        anchor = {k: source[k].detach().clone() for k in self.shared_keys}

        def penalty() -> tuple[str, float, torch.Tensor]:
            return "prox", loss_cfg.prox_mu, proximal_term({k: named[k] for k in anchor}, anchor)

        return penalty


FEDPROX = FedProx(
    "fedprox",
    head="clip",
    description="promptfl + proximal term (mu/2)||S - S_global||^2",
)
