"""``fedavg-full``: FedAvg fine-tuning of the whole image encoder (any family) with a linear head.

The communication baseline: every round each client sends the entire image encoder (vision
transformer + visual projection) and the head, ~86.2 M numbers for ViT-B/16 against FedRSCLIP's
2,048. The encoder trains, so image features cannot be cached: a step decodes and preprocesses a
batch of images and runs the encoder forward and backward (slow on CPU; the point is the count).

Model: ``logits = head(normalize(W_v . LN_post(ViT(x)[CLS])))``. The head is a linear layer
initialised from the zero-shot text features times CLIP's temperature (bias 0), so round 0 is
zero-shot CLIP with the remote-sensing template ensemble. That initialisation has no randomness:
the server builds it once (``initial_state``) and sends it, so every client starts identical.
Every parameter is trainable and shared; nothing is private. The frozen backbone (and its text
tower) is never modified: the model trains a deep copy of the image encoder.

Precision: parameters (and so everything sent) are fp32; ``model.dtype`` bfloat16/float16 runs the
forward and backward passes under ``torch.autocast`` in that dtype (float16 with a gradient
scaler), on the backbone's device.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from task.config import LossConfig, PromptConfig
from task.methods.base import Method
from task.model.backbone import Backbone
from task.model.zeroshot import zeroshot_features

HEAD_INITS = ("zeroshot", "zeros")


class FullFinetuneModel(nn.Module):
    """A trainable copy of the backbone's image encoder plus a linear classification head.

    ``head_init``: ``zeroshot`` (the round-0 model: ``W_h = tau x`` zero-shot text features,
    ``b_h = 0``) or ``zeros`` (a placeholder that a received state overwrites at once: skips the
    text-tower forward passes).
    """

    def __init__(
        self, backbone: Backbone, class_names: list[str], head_init: str = "zeroshot"
    ) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("class_names is empty")
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {list(HEAD_INITS)}, got {head_init!r}")
        tower = copy.deepcopy(backbone.vision).float()
        # The copy's modules are registered here under the names every family uses, so the
        # state sent each round is ``vision_model.* / visual_projection.* / head.*``; the tower
        # (unregistered) only knows how to run them.
        self._tower = (tower,)
        self.vision_model = tower.vision_model
        self.visual_projection = tower.visual_projection
        self.requires_grad_(True)
        self.head = nn.Linear(backbone.embed_dim, len(class_names))
        with torch.no_grad():
            if head_init == "zeroshot":
                text = zeroshot_features(backbone, class_names).shared  # [C, D], unit norm
                self.head.weight.copy_(text.float() * backbone.logit_scale)
            else:
                self.head.weight.zero_()
            self.head.bias.zero_()
        self.to(backbone.device)
        self.class_names = list(class_names)
        self.compute_dtype = backbone.dtype  # autocast dtype (fp32 = no autocast)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision in ``model.dtype`` (parameters stay fp32)."""
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with self.autocast():  # the encoder in model.dtype; normalisation and head in fp32
            projected = self._tower[0](pixel_values.to(self.device, torch.float32))
        return self.head(F.normalize(projected.float(), dim=-1))

    def train(self, mode: bool = True) -> FullFinetuneModel:
        """Train mode for everything but BatchNorm: a CNN tower's running statistics stay those
        of its pretraining (small federated batches would only make them noisy)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


def build_full_model(backbone: Backbone, class_names: list[str]) -> FullFinetuneModel:
    """The round-0 model (identical on server and clients: no randomness)."""
    return FullFinetuneModel(backbone, class_names)


def shared_state(model: FullFinetuneModel, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Detached fp32 CPU copies of the given parameters (what a client sends)."""
    state = model.state_dict()
    return {k: state[k].detach().to("cpu", torch.float32).clone() for k in keys}


def initial_state(backbone: Backbone, class_names: list[str]) -> dict[str, torch.Tensor]:
    """The server's round-0 global model: every parameter of ``build_full_model``, fp32, CPU."""
    model = build_full_model(backbone, class_names)
    keys = [n for n, p in model.named_parameters() if p.requires_grad]
    return shared_state(model, keys)


def load_full_model(
    backbone: Backbone, class_names: list[str], state: Mapping[str, torch.Tensor]
) -> FullFinetuneModel:
    """A model holding exactly ``state`` (the server's global model): every trainable parameter
    must be there, with its shape, and nothing else (a mismatch raises ValueError). Buffers (a
    CNN's frozen BatchNorm statistics) are never sent: they stay the backbone's."""
    model = FullFinetuneModel(backbone, class_names, head_init="zeros")
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(
            f"fedavg-full state does not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''} ({len(extra)})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"fedavg-full {key}: shape {tuple(value.shape)} != {tuple(expected[key].shape)}"
            )
    result = model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    assert not result.unexpected_keys and not set(result.missing_keys) & set(expected)
    return model


@dataclass(frozen=True)
class FullFinetune(Method):
    """No prompts: the client kind ``full`` trains this module's model on raw images
    (task.local.train_full); every trainable parameter is shared, nothing is private."""

    client_kind: ClassVar[str] = "full"

    @property
    def shared_keys(self) -> tuple[str, ...]:
        return ()  # model-dependent: see shared_keys_for

    def shared_keys_for(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(name for name, p in model.named_parameters() if p.requires_grad)

    def params_per_round(self, n_ctx: int, width: int) -> int | None:
        return None  # the whole image encoder: count it on the model (shared_numel)

    @property
    def uses_cached_features(self) -> bool:
        return False

    def needs_patches(self, loss: LossConfig) -> bool:
        return False

    def learner_kwargs(self, prompt: PromptConfig, personal: bool = True) -> dict[str, object]:
        raise ValueError(f"{self.name} has no prompt learner; see task.methods.fedavg_full")

    def initial_shared(
        self,
        backbone: Callable[[], Backbone],
        class_names: Sequence[str],
        prompt: PromptConfig,
        seed: int,
    ) -> dict[str, torch.Tensor]:
        return initial_state(backbone(), list(class_names))


FEDAVG_FULL = FullFinetune(
    "fedavg-full",
    head="linear",
    description="FedAvg fine-tuning of the whole image encoder + a linear head",
)
