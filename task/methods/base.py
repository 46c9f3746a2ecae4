"""What a method is: one object that declares what it trains, shares and keeps, builds its prompt
learner, scores with its heads and defines its training loss.

Every method is an instance of :class:`Method` (or a subclass that overrides a hook) registered in
``task.methods``. The rest of the code asks the method and never tests its name or flags:

* what crosses the wire: ``shared_keys`` (the only state-dict keys ever sent) and
  ``private_keys`` (kept on the client's disk); ``shared_keys_for(model)`` where the count
  depends on the model; ``params_per_round``;
* which client runs it: ``client_kind`` (``prompt``: context vectors over cached frozen image
  features, task.local.client.PromptClient; ``full``: the image encoder on raw images);
* its model: ``build_learner`` / ``initial_shared`` (the prompts it trains, with its fusion and
  low-rank part), ``head_for`` and ``needs_patches``;
* its loss: ``objective`` = CE of the personalised logits (+ gamma x CE of the shared-only
  logits when it keeps a private prompt) + the method's own ``alignment_terms``, and an optional
  ``parameter_penalty`` on the raw parameters (FedProx).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from task.config import LossConfig, PromptConfig
from task.methods.heads import Objective, compute_logits
from task.methods.ot import OTResult
from task.model.backbone import Backbone
from task.model.prompts import PRIVATE_KEY, SHARED_KEY, PromptFeatures, PromptLearner

# A weighted loss term: (name in the logged parts, weight, value).
Term = tuple[str, float, torch.Tensor]
# A penalty on the learner's parameters, evaluated each step: () -> Term.
Penalty = Callable[[], Term]


@dataclass(frozen=True)
class Method:
    """A prompt-learning method over cached frozen features (subclasses add losses/kinds)."""

    name: str
    description: str = ""
    trains: bool = True
    has_shared: bool = True
    has_private: bool = False
    head: str | None = None  # fixed head; None -> loss.head from config
    fusion: str | None = None  # fixed prompt fusion; None -> prompt.fusion from config
    global_ce: bool = True  # gamma-weighted CE of the shared-only model (methods with P)
    private_rank: bool = False  # private part is FedPGP's low-rank U V^T (rank prompt.rank)
    # How the personalised CLIP head combines S and P (task.config.core.PERSONAL_HEADS); only
    # a method that declares ``personal_head_configurable`` reads prompt.personal-head.
    personal_head: str = "private"
    personal_head_configurable: bool = False
    mix_renorm: bool = True  # a mixed head renormalises (False: PromptFolio's weighted sum)
    # Which client runs the method (task.local.client.CLIENT_KINDS).
    client_kind: ClassVar[str] = "prompt"

    # -- what crosses the wire ---------------------------------------------------------------
    @property
    def shared_keys(self) -> tuple[str, ...]:
        return (SHARED_KEY,) if self.has_shared and self.trains else ()

    @property
    def private_keys(self) -> tuple[str, ...]:
        return (PRIVATE_KEY,) if self.has_private and self.trains else ()

    def shared_keys_for(self, model: nn.Module) -> tuple[str, ...]:
        """The keys this method sends for a concrete learner/model."""
        return self.shared_keys

    def params_per_round(self, n_ctx: int, width: int) -> int | None:
        """Shared numbers per round without building a model (None: it depends on the model)."""
        return n_ctx * width if self.shared_keys else 0

    def expert_count(self, prompt: PromptConfig) -> int:
        """Other clients' prompts each client receives as experts (pFedMoAP); 0: none."""
        return 0

    @property
    def uses_cached_features(self) -> bool:
        """False when the image encoder itself trains (features cannot be cached)."""
        return True

    # -- the model ---------------------------------------------------------------------------
    def head_for(self, loss: LossConfig) -> str:
        return self.head or loss.head

    def personal_head_for(self, prompt: PromptConfig) -> str:
        """``private``, ``mix`` (fixed θ) or ``auto`` (θ chosen per client on held-out data);
        ``private`` for a method without both prompts."""
        if not (self.has_shared and self.has_private) or self.private_rank:
            return "private"
        return prompt.personal_head if self.personal_head_configurable else self.personal_head

    def unread_keys(self) -> frozenset[str]:
        """Run-config keys of the personalised head this method never reads (a report does not
        tell its runs apart by them)."""
        head_keys = {"prompt.personal-head", "prompt.skew-low", "prompt.skew-high"}
        head_keys |= {"prompt.mix-holdout", "prompt.mix-grid", "prompt.mix-theta"}
        if self.personal_head_configurable and self.has_shared and self.has_private:
            return frozenset()
        if self.personal_head == "mix" and self.has_shared and self.has_private:
            return frozenset(head_keys - {"prompt.mix-theta"})
        return frozenset(head_keys)

    def train_mix(self, prompt: PromptConfig) -> float | None:
        """θ the personalised CLIP head trains with: the fixed θ of ``mix``; None otherwise
        (``auto`` trains each prompt as itself, then chooses how to mix them)."""
        return prompt.mix_theta if self.personal_head_for(prompt) == "mix" else None

    def needs_patches(self, loss: LossConfig) -> bool:
        """Patch features are extracted and cached only when a term uses them."""
        return self.trains and "ot" in self.head_for(loss)

    def learner_kwargs(self, prompt: PromptConfig, personal: bool = True) -> dict[str, object]:
        """Keyword arguments of ``PromptLearner`` (besides backbone, class names, cfg, seed);
        ``personal=False``: the global model only (the shared prompt, no private part)."""
        with_private = self.has_private and personal
        return {
            "with_shared": self.has_shared,
            "with_private": with_private,
            "private_rank": prompt.rank if self.private_rank and with_private else 0,
            "fusion": self.fusion,
        }

    def build_learner(
        self,
        backbone: Backbone,
        class_names: Sequence[str],
        prompt: PromptConfig,
        seed: int = 0,
        personal: bool = True,
    ) -> PromptLearner:
        """The learner with exactly the prompts (and shapes) this method trains; training,
        evaluation, the server's round-0 prompt, predict and export all build it here.
        ``personal=False``: the global model only (what the server holds and scores)."""
        kwargs = self.learner_kwargs(prompt, personal=personal)
        return PromptLearner(backbone, list(class_names), prompt, seed=seed, **kwargs)

    def initial_shared(
        self,
        backbone: Callable[[], Backbone],
        class_names: Sequence[str],
        prompt: PromptConfig,
        seed: int,
    ) -> dict[str, torch.Tensor]:
        """The round-0 shared state the server sends first (``backbone`` is loaded on demand:
        a method that shares nothing needs none)."""
        if not self.shared_keys:
            return {}
        learner = self.build_learner(backbone(), class_names, prompt, seed=seed, personal=False)
        state = learner.state_dict()
        return {k: state[k].detach().cpu().float().clone() for k in self.shared_keys}

    # -- the loss ----------------------------------------------------------------------------
    def step_features(self, learner: PromptLearner) -> PromptFeatures:
        """The class text features one training step needs (with gradients)."""
        return learner(shared=True, personal=True)

    def objective(
        self,
        loss_cfg: LossConfig,
        feats: PromptFeatures,
        image_global: torch.Tensor,
        patches: torch.Tensor | None,
        labels: torch.Tensor,
        logit_scale: float,
    ) -> Objective:
        """Training loss of the personalised model for one batch (docs/method.md §4)."""
        head = self.head_for(loss_cfg)
        logits, ot_result = compute_logits(
            head, feats, image_global, patches, logit_scale, loss_cfg, personalised=True
        )
        ce = F.cross_entropy(logits, labels)
        loss = ce
        parts = {"ce": float(ce.detach())}
        has_both = feats.personal is not None and feats.shared is not None
        if self.global_ce and loss_cfg.gamma > 0 and has_both:
            # The shared prompt alone is the global model: train it as a classifier too.
            global_logits, _ = compute_logits(
                head, feats, image_global, patches, logit_scale, loss_cfg, personalised=False
            )
            ce_global = F.cross_entropy(global_logits, labels)
            loss = loss + loss_cfg.gamma * ce_global
            parts["ce_global"] = float(ce_global.detach())
        for name, weight, value in self.alignment_terms(
            loss_cfg, feats, patches, labels, ot_result
        ):
            loss = loss + weight * value
            parts[name] = float(value.detach())
        parts["loss"] = float(loss.detach())
        return Objective(loss, logits, parts)

    def alignment_terms(
        self,
        loss_cfg: LossConfig,
        feats: PromptFeatures,
        patches: torch.Tensor | None,
        labels: torch.Tensor,
        ot_result: OTResult | None,
    ) -> Iterator[Term]:
        """The method's own weighted terms beyond CE (none for plain CoOp-style methods)."""
        return iter(())

    def parameter_penalty(
        self,
        learner: PromptLearner,
        loss_cfg: LossConfig,
        global_state: dict[str, torch.Tensor] | None,
    ) -> Penalty | None:
        """A term on the raw parameters for this round (FedProx), or None."""
        return None
