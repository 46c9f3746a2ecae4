"""The frozen CLIP backbone: loading, freezing, and image features for prompt learning.

The backbone never trains, so everything here runs without gradients except the text path used by
``task.text_encoder``. One config key (``model.name``) names either a hub id or a local directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from task.config import ConfigError, ModelConfig
from task.hashing import file_sha256_memo

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneNotFoundError(OSError):
    """The model could be found neither locally nor on the hub (e.g. offline, not cached)."""


@dataclass
class ImageFeatures:
    """Per-image features: L2-normalised global embedding and patch-token embeddings."""

    global_: torch.Tensor  # [B, D]
    patches: torch.Tensor | None  # [B, P, D] or None when not requested


@dataclass
class Backbone:
    """A frozen CLIPModel with its tokenizer and image processor."""

    model: CLIPModel
    tokenizer: object
    image_processor: object
    device: torch.device
    dtype: torch.dtype
    identity: str  # content hash of weights + config: keys the feature cache

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def preprocessing_id(self) -> str:
        """A stable description of the image preprocessing (part of the feature-cache key)."""
        return json.dumps(self.image_processor.to_dict(), sort_keys=True, default=str)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Backbone's own image processor -> pixel tensor on the backbone's device and dtype."""
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, with_patches: bool) -> ImageFeatures:
        """Global embedding (CLS after post-layernorm, projected) and, optionally, patch tokens.

        Patch tokens are the final-layer tokens 1..P passed through the same post-layernorm and
        visual projection as the CLS token, so they live in the joint text-image space (the
        choice OT-based prompt methods make; see docs/method.md).
        """
        vision = self.model.vision_model
        out = vision(pixel_values=pixel_values.to(self.device, self.dtype))
        global_ = self.model.visual_projection(out.pooler_output)
        patches = None
        if with_patches:
            tokens = vision.post_layernorm(out.last_hidden_state[:, 1:, :])
            patches = F.normalize(self.model.visual_projection(tokens).float(), dim=-1)
        return ImageFeatures(F.normalize(global_.float(), dim=-1), patches)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Load, freeze and place a CLIPModel, its tokenizer and its image processor."""
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("model.dtype='float16' needs CUDA; use 'float32' or 'bfloat16' on CPU")
    source = _resolve_source(cfg.name)
    try:
        model = CLIPModel.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
        image_processor = AutoImageProcessor.from_pretrained(source)
    except OSError as err:
        raise BackboneNotFoundError(_not_found_message(cfg.name, err)) from err
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    return Backbone(model, tokenizer, image_processor, device, dtype, _identity(source, model))


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
        f"could not load CLIP model {name!r} ({err.__class__.__name__}: {err}). "
        "If this machine is offline or the model is not in the Hugging Face cache, download it "
        "where you have network (e.g. `hf download openai/clip-vit-base-patch16 --local-dir "
        "models/clip-vit-base-patch16`), copy the directory here and pass it: "
        "--run-config \"model.name='models/clip-vit-base-patch16'\"."
    )


def _identity(source: str, model: CLIPModel) -> str:
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

