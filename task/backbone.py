"""The frozen dual-encoder backbone: loading, freezing, and the two towers prompt learning uses.

The backbone never trains, so everything here runs without gradients except the text tower's
path from prompt vectors to features. One config key (``model.name``) names either a hub id or a
local directory; the model family (CLIP, VisionTextDualEncoder, SigLIP) is read from the loaded
model's class and its towers come from ``task.backbones``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel

from task.backbones import ImageFeatures, TextTower, UnsupportedModelError, VisionTower, towers_for
from task.backbones.optional_imports import timm_for_transformers
from task.config import ConfigError, ModelConfig
from task.hashing import file_sha256_memo

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneNotFoundError(OSError):
    """The model could be found neither locally nor on the hub (e.g. offline, not cached)."""


__all__ = ["Backbone", "BackboneNotFoundError", "ImageFeatures", "load_backbone"]


@dataclass
class Backbone:
    """A frozen dual encoder, its towers, tokenizer and image processor."""

    model: PreTrainedModel
    tokenizer: object
    image_processor: object
    device: torch.device
    dtype: torch.dtype
    identity: str  # content hash of weights + config: keys the feature cache
    family: str  # clip | dual-encoder | siglip (from the model's class)
    text: TextTower
    vision: VisionTower

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature exp(t) (SigLIP's logit bias shifts every class equally: unused)."""
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space (the text and image features)."""
        return self.text.embed_dim

    @property
    def text_width(self) -> int:
        """Width of one prompt vector (the text tower's token embedding)."""
        return self.text.width

    @property
    def preprocessing_id(self) -> str:
        """A stable description of the image preprocessing (part of the feature-cache key)."""
        return json.dumps(self.image_processor.to_dict(), sort_keys=True, default=str)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Backbone's own image processor -> pixel tensor on the backbone's device and dtype."""
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    def encode_images(self, pixel_values: torch.Tensor, with_patches: bool) -> ImageFeatures:
        """L2-normalised global embedding (exactly ``get_image_features``, normalised) and,
        optionally, patch tokens in the joint space (per family: task/backbones, docs/method.md)."""
        return self.vision.encode(pixel_values, with_patches)

    @torch.no_grad()
    def encode_sentences(self, sentences: list[str]) -> torch.Tensor:
        """Unnormalised text features of whole sentences via the model's own
        ``get_text_features``, padded the way the family was trained (SigLIP: to full length)."""
        if self.text.sentence_padding == "max_length":
            kwargs = {"padding": "max_length", "max_length": self.text.max_positions}
        else:
            kwargs = {"padding": True}
        inputs = self.tokenizer(sentences, truncation=True, return_tensors="pt", **kwargs)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if self.family == "siglip":
            inputs.pop("attention_mask", None)  # SigLIP attends to its padding, as trained
        return self.model.get_text_features(**inputs).pooler_output


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Load, freeze and place a supported dual encoder, its tokenizer and its image processor.

    Weights load in ``model.dtype`` (float32 by default, whatever dtype they are stored in);
    the model stays in eval mode, so BatchNorm statistics of CNN towers never change.
    """
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("model.dtype='float16' needs CUDA; use 'float32' or 'bfloat16' on CPU")
    source = _resolve_source(cfg.name)
    try:
        with timm_for_transformers():
            model = AutoModel.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
        image_processor = AutoImageProcessor.from_pretrained(source)
    except OSError as err:
        raise BackboneNotFoundError(_not_found_message(cfg.name, err)) from err
    except ValueError as err:  # transformers: unknown model type or no matching class
        raise UnsupportedModelError(f"model {cfg.name!r}: {err}") from err
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    towers = towers_for(model, tokenizer)
    return Backbone(
        model,
        tokenizer,
        image_processor,
        device,
        dtype,
        _identity(source, model),
        towers.family,
        towers.text,
        towers.vision,
    )


def _resolve_source(name: str) -> str:
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneNotFoundError(
                f"model directory {str(path)!r} has no config.json; it must hold a model saved "
                "with CLIPModel.save_pretrained (plus its tokenizer and preprocessor files)"
            )
        return str(path.resolve())
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        raise BackboneNotFoundError(
            f"model directory {name!r} does not exist; set model.name to an existing local "
            "directory or a hub id such as 'openai/clip-vit-base-patch16'"
        )
    return name


def _not_found_message(name: str, err: Exception) -> str:
    return (
        f"could not load model {name!r} ({err.__class__.__name__}: {err}). "
        "If this machine is offline or the model is not in the Hugging Face cache, download it "
        "where you have network (e.g. `hf download openai/clip-vit-base-patch16 --local-dir "
        "models/clip-vit-base-patch16`), copy the directory here and pass it: "
        "--run-config \"model.name='models/clip-vit-base-patch16'\"."
    )


def _identity(source: str, model: PreTrainedModel) -> str:
    """Hash of what determines features: the config and the weights' bytes (or hub revision)."""
    config = {k: v for k, v in model.config.to_dict().items() if "name_or_path" not in k}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    path = Path(source)
    if path.is_dir():
        for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(weights.name.encode())
            h.update(file_sha256_memo(weights).encode())
    else:
        h.update(source.encode())
        h.update(str(getattr(model.config, "_commit_hash", "") or "").encode())
    return h.hexdigest()[:16]

