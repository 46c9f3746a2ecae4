"""The heads that turn class text features and image features into logits (docs/method.md §2-3).

* ``clip``: ``scale * cos(g, t_c)`` on the global image embedding, with ``t_c`` the class's
  personal feature (or the mix of shared and personal, ``PromptFeatures.mix``) when
  personalised, else its shared one (:func:`head_text`);
* ``ot``: ``scale * <T*, cos(patches, prompts_c)>`` over the class's prompt set (shared and, when
  personalised, personal: :func:`prompt_set`);
* ``clip+ot``: their mean.

Training (each method's objective), local evaluation, the server's global evaluation and
prediction all score through :func:`compute_logits`, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from task.config import LossConfig
from task.methods.ot import OTResult, patch_prompt_ot
from task.model.prompts import PromptFeatures

HEADS = ("clip", "ot", "clip+ot")


@dataclass
class Objective:
    """The total loss and its parts (parts are detached floats for logging)."""

    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, float]


def head_parts(head: str) -> tuple[str, ...]:
    """``clip+ot`` -> ("clip", "ot")."""
    return tuple(head.split("+"))


def prompt_set(feats: PromptFeatures, personalised: bool) -> torch.Tensor:
    """Each class's prompt features [C, M, D]: shared and personal (personalised) or shared.
    A personalised head mixed at θ = 0 is the shared prompt's: its set is the shared prompt
    alone, so that client's personalised model is exactly the global one."""
    members = [feats.shared]
    if personalised and not (feats.mix == 0.0 and feats.shared is not None):
        members.append(feats.personal)
    members = [m for m in members if m is not None]
    if not members:
        raise ValueError("no prompt features to classify with")
    return torch.stack(members, dim=1)


def head_text(feats: PromptFeatures, personalised: bool) -> torch.Tensor:
    """Class features the CLIP head uses: when personalised, the personal prompt's, or with a
    mix θ ``normalize((1 - θ) s_c + θ p_c)``; otherwise the shared prompt's."""
    if personalised and feats.personal is not None:
        if feats.mix is None or feats.shared is None:
            return feats.personal
        return mix_features(feats.shared, feats.personal, feats.mix, feats.mix_renorm)
    if feats.shared is None:
        raise ValueError("the global model needs a shared prompt")
    return feats.shared


def mix_features(
    shared: torch.Tensor, personal: torch.Tensor, theta: float, renorm: bool = True
) -> torch.Tensor:
    """The portfolio of the two prompts' class features: ``normalize((1 - θ) s + θ p)``, or
    the plain weighted sum (``renorm=False``, as PromptFolio's code); θ = 0 is the shared
    features exactly, θ = 1 the personal ones."""
    if theta == 0.0:
        return shared
    if theta == 1.0:
        return personal
    mixed = (1.0 - theta) * shared + theta * personal
    return F.normalize(mixed, dim=-1) if renorm else mixed


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
    if "clip" in head_parts(head):
        logits.append(logit_scale * image_global @ head_text(feats, personalised).t())
    if "ot" in head_parts(head):
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
