"""The one place a prompt learner is built: training, evaluation, the server's round-0 prompt,
predict and export all ask here, so every path builds the prompts a method trains with (its
private low-rank part, its fixed fusion) and loads tensors with the same shape check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from task.backbone import Backbone
from task.config import PromptConfig
from task.methods import Method
from task.prompt_learner import PromptLearner


def build_learner(
    method: Method,
    backbone: Backbone,
    class_names: Sequence[str],
    prompt: PromptConfig,
    seed: int = 0,
    personal: bool = True,
) -> PromptLearner:
    """The learner with exactly the prompts (and shapes) ``method`` trains; ``personal=False``
    builds the global model only (the shared prompt: what the server holds and scores)."""
    kwargs = method.learner_kwargs(prompt, personal=personal)
    return PromptLearner(backbone, list(class_names), prompt, seed=seed, **kwargs)


def load_prompts(
    learner: PromptLearner, state: Mapping[str, torch.Tensor], strict: bool = True
) -> PromptLearner:
    """Load context tensors, refusing a shape this backbone and prompt config cannot hold (the
    error says which tensor and why, e.g. a run trained with another model). ``strict``: the
    state holds every prompt of the learner; otherwise a subset (e.g. only the shared one)."""
    expected = learner.state_dict()
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise ValueError(f"this learner has no {unknown} (it holds {sorted(expected)})")
    missing = sorted(set(expected) - set(state))
    if strict and missing:
        raise ValueError(f"missing prompt tensor(s) {missing}")
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{name} has shape {tuple(value.shape)} but this backbone and prompt config "
                f"(prompt.n-ctx={learner.cfg.n_ctx}, rank {learner.private_rank}) need "
                f"{tuple(expected[name].shape)}; was the run trained with another model?"
            )
    learner.load_state_dict(
        {k: v.to(expected[k].device, expected[k].dtype) for k, v in state.items()}, strict=strict
    )
    return learner
