"""Registry of methods: what each trains, which tensors it shares, which losses it uses.

A method's ``shared_keys`` are the only state-dict keys that may ever be sent to the server;
``private_keys`` stay on the client's disk. The server validates replies against these sets.
``shared_numel`` / ``shared_bytes`` count what a method sends per round (docs/method.md §6).

``fedavg-full`` is the one method that does not learn prompts over cached features: it fine-tunes
the whole image encoder plus a linear head on images (``task.full_finetune``). Its shared keys
depend on the model, so use ``shared_keys_for(model)``; ``full_finetune`` tells the apps apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a registry with no imports of its own: the run-config parser reads METHODS
    from torch import nn  # (task.config -> task.methods), and nothing here needs torch

    from task.config import LossConfig, PromptConfig

# The prompt learner's two parameters: the only state-dict keys a method may share or keep.
SHARED_KEY = "shared_ctx"
PRIVATE_KEY = "private_ctx"


@dataclass(frozen=True)
class Method:
    """Static description of a federated prompt-learning method."""

    name: str
    trains: bool = True
    has_shared: bool = True
    has_private: bool = False
    dual_prompt_alignment: bool = False  # alpha-weighted loss (needs both prompts)
    ot_alignment: bool = False  # beta-weighted cross-modal OT loss
    head: str | None = None  # fixed head; None -> loss.head from config
    description: str = ""
    global_ce: bool = True  # gamma-weighted CE of the shared-only model (methods with P)
    fusion: str | None = None  # fixed prompt fusion; None -> prompt.fusion from config
    proximal: bool = False  # FedProx: (mu/2)||S - S_global||^2 on the shared prompt
    low_rank_private: bool = False  # FedPGP: personal context S + U V^T, rank prompt.rank
    pgp_contrastive: bool = False  # FedPGP's prompt-wise contrastive loss
    full_finetune: bool = False  # fedavg-full: image encoder + linear head on images

    @property
    def shared_keys(self) -> tuple[str, ...]:
        if self.full_finetune:  # model-dependent: see shared_keys_for
            return ()
        return (SHARED_KEY,) if self.has_shared and self.trains else ()

    @property
    def private_keys(self) -> tuple[str, ...]:
        return (PRIVATE_KEY,) if self.has_private and self.trains else ()

    @property
    def uses_cached_features(self) -> bool:
        """False when the image encoder itself trains (features cannot be cached)."""
        return not self.full_finetune

    def shared_keys_for(self, model: nn.Module) -> tuple[str, ...]:
        """The keys this method sends for a concrete learner/model (every key for fedavg-full)."""
        if self.full_finetune:
            return tuple(name for name, p in model.named_parameters() if p.requires_grad)
        return self.shared_keys

    def head_for(self, loss: LossConfig) -> str:
        return self.head or loss.head

    def needs_patches(self, loss: LossConfig) -> bool:
        """Patch features are extracted and cached only when a term uses them."""
        if self.full_finetune:
            return False
        return self.trains and (
            "ot" in self.head_for(loss) or (self.ot_alignment and loss.beta > 0)
        )

    def learner_kwargs(self, prompt: PromptConfig, personal: bool = True) -> dict[str, Any]:
        """Keyword arguments of ``PromptLearner`` (besides backbone, class names, cfg, seed);
        ``personal=False``: the global model only (the shared prompt, no private part)."""
        if self.full_finetune:
            raise ValueError(f"{self.name} has no prompt learner; see task.full_finetune")
        with_private = self.has_private and personal
        return {
            "with_shared": self.has_shared,
            "with_private": with_private,
            "private_rank": prompt.rank if self.low_rank_private and with_private else 0,
            "fusion": self.fusion,
        }


def shared_numel(method: Method, learner: nn.Module) -> int:
    """Numbers the method sends to the server per round (and receives back) for this learner."""
    state = learner.state_dict()
    return sum(state[k].numel() for k in method.shared_keys_for(learner))


def shared_bytes(method: Method, learner: nn.Module, bytes_per_value: int = 4) -> int:
    """Bytes of one upload per round (fp32 by default; 2 with fp16 transport)."""
    return shared_numel(method, learner) * bytes_per_value


def prompt_numel(method: Method, n_ctx: int, width: int) -> int:
    """Shared numbers per round of a prompt method without building a model: h x W or 0."""
    if method.full_finetune:
        raise ValueError("fedavg-full's count depends on the image encoder: use shared_numel")
    return n_ctx * width if method.shared_keys else 0


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "zeroshot",
            trains=False,
            head="clip",
            description="frozen CLIP with hand-written remote-sensing templates, no training",
        ),
        Method(
            "local",
            has_shared=False,
            has_private=True,
            head="clip",
            description="CoOp prompt per client, never communicated",
        ),
        Method("promptfl", head="clip", description="one shared CoOp prompt, CE, FedAvg"),
        Method(
            "fedprox",
            head="clip",
            proximal=True,
            description="promptfl + proximal term (mu/2)||S - S_global||^2",
        ),
        Method(
            "fedotp",
            has_private=True,
            head="ot",
            global_ce=False,
            fusion="separate",
            description="global + local prompts fused by OT over patches (FedOTP-style), CE only",
        ),
        Method(
            "fedpgp",
            has_private=True,
            head="clip",
            global_ce=False,
            low_rank_private=True,
            pgp_contrastive=True,
            description="shared S + private low-rank U V^T, prompt-wise contrastive loss",
        ),
        Method(
            "fedrsclip",
            has_private=True,
            dual_prompt_alignment=True,
            ot_alignment=True,
            description="shared + private prompts, dual prompt alignment, cross-modal OT",
        ),
        Method(
            "fedrsclip-noprivate",
            ot_alignment=True,
            description="ablation: fedrsclip without the private prompt (so without DPA)",
        ),
        Method(
            "fedrsclip-nodpa",
            has_private=True,
            ot_alignment=True,
            description="ablation: fedrsclip without dual prompt alignment",
        ),
        Method(
            "fedrsclip-noot",
            has_private=True,
            dual_prompt_alignment=True,
            head="clip",
            description="ablation: fedrsclip without any patch-level OT (no OT loss, CLIP head)",
        ),
        Method(
            "fedavg-full",
            head="linear",
            full_finetune=True,
            description="FedAvg fine-tuning of the whole image encoder + a linear head",
        ),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None
