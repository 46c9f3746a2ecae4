"""``fedrsclip``: shared + private prompts with dual prompt alignment (DPA) and cross-modal OT
feature alignment (docs/method.md §4), and its ablations (each drops one part).

    L = CE(personalised logits) + gamma CE(shared-only logits) + alpha L_dpa + beta L_ot

* L_dpa: InfoNCE with scale s pulling each class's personal prompt feature to the same class's
  shared feature and away from other classes' (shared side held fixed);
* L_ot: entropic OT value between the image's patches and its true class's prompt features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from task.config import LossConfig
from task.methods.base import Method, Term
from task.methods.heads import prompt_set
from task.methods.ot import OTResult, paired_ot
from task.model.prompts import PromptFeatures


def dual_prompt_alignment(
    personal: torch.Tensor, shared: torch.Tensor, scale: float
) -> torch.Tensor:
    """InfoNCE over classes: personal feature c should match shared feature c (shared fixed)."""
    logits = scale * personal @ shared.detach().t()
    return F.cross_entropy(logits, torch.arange(len(personal), device=personal.device))


def ot_alignment(
    loss_cfg: LossConfig,
    feats: PromptFeatures,
    patches: torch.Tensor,
    labels: torch.Tensor,
    ot_result: OTResult | None,
) -> torch.Tensor:
    """Mean entropic OT value between each image's patches and its true class's prompt set
    (reusing the OT head's solution when the head already solved it)."""
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
    return distance.mean()


@dataclass(frozen=True)
class FedRSCLIP(Method):
    dpa: bool = True  # alpha-weighted dual prompt alignment (needs both prompts)
    ot: bool = True  # beta-weighted cross-modal OT alignment

    def needs_patches(self, loss: LossConfig) -> bool:
        return super().needs_patches(loss) or (self.trains and self.ot and loss.beta > 0)

    def alignment_terms(
        self,
        loss_cfg: LossConfig,
        feats: PromptFeatures,
        patches: torch.Tensor | None,
        labels: torch.Tensor,
        ot_result: OTResult | None,
    ) -> Iterator[Term]:
        both = feats.personal is not None and feats.shared is not None
        if self.dpa and loss_cfg.alpha > 0 and both:
            dpa = dual_prompt_alignment(feats.personal, feats.shared, loss_cfg.dpa_scale)
            yield "dpa", loss_cfg.alpha, dpa
        if self.ot and loss_cfg.beta > 0:
            if patches is None:
                raise ValueError("the OT alignment loss needs patch features")
            yield "ot", loss_cfg.beta, ot_alignment(loss_cfg, feats, patches, labels, ot_result)


FEDRSCLIP = FedRSCLIP(
    "fedrsclip",
    has_private=True,
    personal_head_configurable=True,
    description="shared + private prompts, dual prompt alignment, cross-modal OT",
)
ABLATIONS = (
    FedRSCLIP(
        "fedrsclip-noprivate",
        dpa=False,
        description="ablation: fedrsclip without the private prompt (so without DPA)",
    ),
    FedRSCLIP(
        "fedrsclip-nodpa",
        has_private=True,
        dpa=False,
        personal_head_configurable=True,
        description="ablation: fedrsclip without dual prompt alignment",
    ),
    FedRSCLIP(
        "fedrsclip-noot",
        has_private=True,
        ot=False,
        head="clip",
        personal_head_configurable=True,
        description="ablation: fedrsclip without any patch-level OT (no OT loss, CLIP head)",
    ),
    FedRSCLIP(
        "fedrsclip-separate",
        has_private=True,
        fusion="separate",
        personal_head="private",
        description="ablation: the personalised CLIP head on the private prompt alone "
        "(separate prompts; the head before the personalised-head work)",
    ),
    FedRSCLIP(
        "fedrsclip-concat",
        has_private=True,
        fusion="concat",
        personal_head="private",
        description="ablation: the paper summary's literal reading, personal prompt [S; P; class]",
    ),
)
