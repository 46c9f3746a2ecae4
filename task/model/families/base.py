"""What every model family provides: a frozen text tower driven by prompt vectors, and a frozen
vision tower giving a global embedding plus patch embeddings in the joint space.

Prompt learning needs only these two faces of a dual encoder, so the prompt learner, losses,
feature cache, training, predict and export are written against them and never against a model
class. One adapter per family (``task.model.families.clip``, ``.dual_encoder``, ``.siglip``) builds
the towers from a loaded Hugging Face model; ``task.model.families.families`` picks the adapter from
the model's class.

Patch embeddings follow one rule in every family: a patch token goes through the same pooling
head and projection the model applies to its pooled token, as if it were the only token (CLIP:
post-layernorm + projection; BERT-style ViT pooler: dense + tanh; SigLIP: the attention-pooling
head over a single token; a CNN: the feature-map cell itself, which average pooling would mean).
docs/method.md states this per family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedModelError(ValueError):
    """The loaded model is of a family (or has a tower) that no adapter handles."""


@dataclass
class ImageFeatures:
    """Per-image features: L2-normalised global embedding and patch-token embeddings."""

    global_: torch.Tensor  # [B, D]
    patches: torch.Tensor | None  # [B, P, D] or None when not requested


@dataclass
class ClassTokens:
    """Token ids of every class prompt around the learnable context.

    A class prompt is ``prefix + context + suffix``: ``prefix`` holds the special tokens the
    tokenizer puts before the text (CLIP's start token, BERT's [CLS], nothing for SigLIP); the
    suffix is the class name, the full stop and the closing special tokens, padded with the pad id.
    """

    prefix: list[int]
    suffix: torch.Tensor  # [C, S] int64, padded with pad_id
    suffix_len: torch.Tensor  # [C] real tokens of each suffix


def tokenize_class_prompts(
    tokenizer: object, class_names: Sequence[str], max_positions: int, pad_id: int
) -> ClassTokens:
    """Split the tokenization of ``"<class>."`` into special prefix and suffix, per class.

    The split is read off the tokenizer itself (with and without special tokens), so the same
    code serves BPE with start/end tokens, WordPiece with [CLS]/[SEP] and SentencePiece with only
    an end token.
    """
    prefix: list[int] | None = None
    suffixes: list[list[int]] = []
    for name in class_names:
        text = f"{name}."
        full = list(tokenizer(text).input_ids)
        content = list(tokenizer(text, add_special_tokens=False).input_ids)
        start = _find(full, content)
        if start is None:
            raise UnsupportedModelError(
                f"the tokenizer changes the tokens of {text!r} when it adds special tokens; "
                "prompt vectors cannot be inserted before the class name"
            )
        if prefix is None:
            prefix = full[:start]
        elif full[:start] != prefix:
            raise UnsupportedModelError("the tokenizer's leading special tokens differ by class")
        suffixes.append(full[start:])
    if prefix is None:
        raise ValueError("class_names is empty")
    longest = max(len(s) for s in suffixes)
    if len(prefix) + longest > max_positions:
        worst = class_names[max(range(len(suffixes)), key=lambda i: len(suffixes[i]))]
        raise ValueError(
            f"class name {worst!r} is too long for the text tower's {max_positions} positions"
        )
    width = max_positions - len(prefix)
    suffix = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(suffixes):
        suffix[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in suffixes], dtype=torch.long)
    return ClassTokens(prefix, suffix, lengths)


def _find(full: list[int], part: list[int]) -> int | None:
    for start in range(len(full) - len(part) + 1):
        if full[start : start + len(part)] == part:
            return start
    return None


class TextTower(nn.Module):
    """A frozen text encoder that reads token embeddings instead of token ids.

    ``forward(embeds [N, L, W], lengths [N]) -> [N, D]`` returns the projected, unnormalised text
    features, exactly as the model's own ``get_text_features`` would for the same tokens, where
    ``lengths`` counts the real tokens of each row (the rest is padding).

    ``exact_cut``: padding after the last real token cannot change the feature (causal attention,
    or bidirectional attention with padding masked), so sequences may be cut to the longest real
    prompt. False (SigLIP: no mask, pooled at the last position): always ``max_positions`` long.
    ``sentence_padding``: how the family pads whole sentences for ``get_text_features``.
    """

    exact_cut: bool = True
    sentence_padding: str = "longest"

    def __init__(self, embedding: nn.Embedding, max_positions: int, pad_id: int) -> None:
        super().__init__()
        self._embedding = (embedding,)  # a view into the text model: not a second registration
        self.max_positions = int(max_positions)
        self.pad_id = int(pad_id)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._embedding[0]

    @property
    def width(self) -> int:
        """Width of a token embedding, i.e. of one prompt vector."""
        return int(self.token_embedding.weight.shape[1])

    @property
    def embed_dim(self) -> int:
        """Width of the joint text-image space (the projection's output)."""
        return int(self.text_projection.weight.shape[0])

    def forward(self, embeds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Projected features of tokenized sentences: the model's own ``get_text_features``
        (used for zero-shot templates; the prompt path is ``forward``)."""
        raise NotImplementedError


class VisionTower(nn.Module):
    """A frozen image encoder with its projection into the joint space.

    The global feature is the projection of the tower's ``pooler_output`` (exactly
    ``get_image_features``); subclasses say how its patch tokens go through the same pooling head
    (``pooled_tokens``). The modules live in the attributes ``vision_model`` and
    ``visual_projection`` in every family, so a trainable copy (``fedavg-full``) has the same
    parameter names everywhere.
    """

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def pooled_tokens(self, output: object) -> torch.Tensor:
        """The patch tokens [B, P, W] through the pooling head, before the projection."""
        raise NotImplementedError

    def project(
        self, pixel_values: torch.Tensor, with_patches: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected, unnormalised global feature and (optionally) patch features."""
        out = self.vision_model(pixel_values=pixel_values)
        global_ = self.visual_projection(out.pooler_output)
        patches = self.visual_projection(self.pooled_tokens(out)) if with_patches else None
        return global_, patches

    def prepare(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels on the tower's device and dtype (and memory layout, for CNNs)."""
        param = next(self.vision_model.parameters())
        return pixel_values.to(param.device, param.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected, unnormalised global feature [B, D] (differentiable: fedavg-full trains it)."""
        return self.project(self.prepare(pixel_values), with_patches=False)[0]

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor, with_patches: bool) -> ImageFeatures:
        """L2-normalised global and (optionally) patch features, in float32."""
        global_, patches = self.project(self.prepare(pixel_values), with_patches)
        normed = F.normalize(patches.float(), dim=-1) if patches is not None else None
        return ImageFeatures(F.normalize(global_.float(), dim=-1), normed)


@dataclass
class Towers:
    """What a family adapter returns for a loaded model."""

    family: str
    text: TextTower
    vision: VisionTower
