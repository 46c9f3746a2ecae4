"""``fedpgp`` (FedPGP-style, ICML 2024): the personal context is the shared prompt plus a private
low-rank part, ``S + U V^T`` (rank ``prompt.rank``), trained with CE and FedPGP's prompt-wise
contrastive loss against the frozen hand-crafted prompt (docs/method.md §5)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from task.config import LossConfig
from task.methods.base import Method, Term
from task.methods.ot import OTResult
from task.model.prompts import PromptFeatures, PromptLearner


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


@dataclass(frozen=True)
class FedPGP(Method):
    def step_features(self, learner: PromptLearner) -> PromptFeatures:
        return learner(shared=True, personal=True, anchor=True)

    def alignment_terms(
        self,
        loss_cfg: LossConfig,
        feats: PromptFeatures,
        patches: torch.Tensor | None,
        labels: torch.Tensor,
        ot_result: OTResult | None,
    ) -> Iterator[Term]:
        if loss_cfg.pgp_weight > 0 and feats.personal is not None and feats.shared is not None:
            if feats.anchor is None:
                raise ValueError("the FedPGP contrastive loss needs anchor (hand-crafted) features")
            con = pgp_contrastive(feats.anchor, feats.shared, feats.personal, loss_cfg.pgp_temp)
            yield "pgp", loss_cfg.pgp_weight, con


FEDPGP = FedPGP(
    "fedpgp",
    has_private=True,
    head="clip",
    global_ce=False,
    private_rank=True,
    description="shared S + private low-rank U V^T, prompt-wise contrastive loss",
)
