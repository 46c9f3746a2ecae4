"""Logits and the training objective (see docs/method.md for every equation).

    L = CE(logits, y) + gamma * CE(global logits, y) + alpha * L_dpa + beta * L_ot

* logits: CLIP head ``scale * cos(g, t_c)`` on the global image embedding, an OT head
  ``scale * <T*, cos(patches, prompts_c)>``, or their mean (``loss.head``).
* L_dpa (dual prompt alignment): InfoNCE with scale s pulling each class's personal prompt
  feature to the same class's shared feature and away from other classes' (shared side held fixed).
* L_ot (cross-modal alignment): entropic OT value between the image's patches and its true
  class's prompt features.

Baselines add (docs/method.md §5): FedProx's proximal term ``(mu/2)||S - S_global||^2`` (applied
in task.train, it acts on parameters, not features) and FedPGP's prompt-wise contrastive loss
``pgp_contrastive``. ``loss.ot-marginal-reg`` > 0 makes every OT unbalanced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from task.config import LossConfig
from task.methods import Method
from task.ot import OTResult, paired_ot, patch_prompt_ot
from task.prompt_learner import PromptFeatures


@dataclass
class Objective:
    """The total loss and its parts (parts are detached floats for logging)."""

    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, float]


def prompt_set(feats: PromptFeatures, personalised: bool) -> torch.Tensor:
    """Each class's prompt features [C, M, D]: shared and personal (personalised) or shared."""
    members = [feats.shared]
    if personalised:
        members.append(feats.personal)
    members = [m for m in members if m is not None]
    if not members:
        raise ValueError("no prompt features to classify with")
    return torch.stack(members, dim=1)


def head_text(feats: PromptFeatures, personalised: bool) -> torch.Tensor:
    """Class features the CLIP head uses: the personal prompt when personalised, else shared."""
    if personalised and feats.personal is not None:
        return feats.personal
    if feats.shared is None:
        raise ValueError("the global model needs a shared prompt")
    return feats.shared


def compute_logits(
    head: str,
    feats: PromptFeatures,
    image_global: torch.Tensor,
    patches: torch.Tensor | None,
    logit_scale: float,
    loss_cfg: LossConfig,
    personalised: bool,
) -> tuple[torch.Tensor, OTResult | None]:
    """Class logits [B, C] of the chosen head; also the OT result when the head solved it."""
    logits = []
    ot_result = None
    if "clip" in head.split("+"):
        logits.append(logit_scale * image_global @ head_text(feats, personalised).t())
    if "ot" in head.split("+"):
        if patches is None:
            raise ValueError(f"head {head!r} needs patch features, which were not extracted")
        ot_result = patch_prompt_ot(
            patches,
            prompt_set(feats, personalised),
            loss_cfg.ot_reg,
            loss_cfg.ot_iters,
            loss_cfg.ot_tol,
            marginal_reg=loss_cfg.ot_marginal_reg,
            solver=loss_cfg.ot_solver,
        )
        logits.append(logit_scale * ot_result.similarity)
    return torch.stack(logits).mean(dim=0), ot_result


def dual_prompt_alignment(
    personal: torch.Tensor, shared: torch.Tensor, scale: float
) -> torch.Tensor:
    """InfoNCE over classes: personal feature c should match shared feature c (shared fixed)."""
    logits = scale * personal @ shared.detach().t()
    return F.cross_entropy(logits, torch.arange(len(personal), device=personal.device))


def pgp_contrastive(
    anchor: torch.Tensor, shared: torch.Tensor, personal: torch.Tensor, temp: float
) -> torch.Tensor:
    """FedPGP's prompt-wise contrastive loss, per class c (anchor = hand-crafted, frozen):

    positive cos(a_c, s_c), negative cos(s_c, p_c); ``CE([pos, neg] / temp, 0)``. It keeps the
    shared prompt near CLIP's general knowledge and pushes the personal prompt away from it.
    """
    pos = (anchor.detach() * shared).sum(dim=-1)
    neg = (shared * personal).sum(dim=-1)
    logits = torch.stack([pos, neg], dim=1) / temp
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def proximal_term(
    params: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor]
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


def objective(
    method: Method,
    loss_cfg: LossConfig,
    feats: PromptFeatures,
    image_global: torch.Tensor,
    patches: torch.Tensor | None,
    labels: torch.Tensor,
    logit_scale: float,
) -> Objective:
    """Training loss of the personalised model for one batch."""
    head = method.head_for(loss_cfg)
    logits, ot_result = compute_logits(
        head, feats, image_global, patches, logit_scale, loss_cfg, personalised=True
    )
    ce = F.cross_entropy(logits, labels)
    loss = ce
    parts = {"ce": float(ce.detach())}
    has_both = feats.personal is not None and feats.shared is not None
    if method.global_ce and loss_cfg.gamma > 0 and has_both:
        # The shared prompt alone is the global model: train it as a classifier too.
        global_logits, _ = compute_logits(
            head, feats, image_global, patches, logit_scale, loss_cfg, personalised=False
        )
        ce_global = F.cross_entropy(global_logits, labels)
        loss = loss + loss_cfg.gamma * ce_global
        parts["ce_global"] = float(ce_global.detach())
    use_dpa = method.dual_prompt_alignment and loss_cfg.alpha > 0
    if use_dpa and feats.personal is not None and feats.shared is not None:
        dpa = dual_prompt_alignment(feats.personal, feats.shared, loss_cfg.dpa_scale)
        loss = loss + loss_cfg.alpha * dpa
        parts["dpa"] = float(dpa.detach())
    use_pgp = method.pgp_contrastive and loss_cfg.pgp_weight > 0
    if use_pgp and has_both:
        if feats.anchor is None:
            raise ValueError("the FedPGP contrastive loss needs anchor (hand-crafted) features")
        con = pgp_contrastive(feats.anchor, feats.shared, feats.personal, loss_cfg.pgp_temp)
        loss = loss + loss_cfg.pgp_weight * con
        parts["pgp"] = float(con.detach())
    if method.ot_alignment and loss_cfg.beta > 0:
        if patches is None:
            raise ValueError("the OT alignment loss needs patch features")
        if ot_result is not None:
            distance = ot_result.distance.gather(1, labels[:, None]).squeeze(1)
        else:
            prompts = prompt_set(feats, personalised=True)[labels]
            distance = paired_ot(
                patches,
                prompts,
                loss_cfg.ot_reg,
                loss_cfg.ot_iters,
                loss_cfg.ot_tol,
                marginal_reg=loss_cfg.ot_marginal_reg,
                solver=loss_cfg.ot_solver,
            ).distance.squeeze(1)
        ot_loss = distance.mean()
        loss = loss + loss_cfg.beta * ot_loss
        parts["ot"] = float(ot_loss.detach())
    parts["loss"] = float(loss.detach())
    return Objective(loss, logits, parts)
