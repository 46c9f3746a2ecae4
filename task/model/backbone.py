"""The frozen dual-encoder backbone: loading, freezing, and the two towers prompt learning uses.

The backbone never trains, so everything here runs without gradients except the text tower's
path from prompt vectors to features. One config key (``model.name``) names either a hub id or a
local directory; the model family (CLIP, VisionTextDualEncoder, SigLIP) is read from the loaded
model's class and its towers come from ``task.model.families``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedModel,
)

from task.config import ConfigError, ModelConfig
from task.hashing import file_sha256_memo
from task.model.families import (
    ImageFeatures,
    TextTower,
    UnsupportedModelError,
    VisionTower,
    towers_for,
)
from task.model.families.families import FAMILY_OF_TYPE, SUPPORTED_MODEL_TYPES
from task.model.families.optional_imports import has_timm_tower, timm_for_transformers
from task.model.families.text_only import load_text_side, text_tower, weight_files

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneNotFoundError(OSError):
    """The model could be found neither locally nor on the hub (e.g. offline, not cached)."""


__all__ = ["Backbone", "BackboneNotFoundError", "ImageFeatures", "load_backbone"]


class Backbone:
    """A frozen dual encoder: its text tower, its vision tower (built on first use), tokenizer
    and image processor.

    A backbone loaded from a local directory starts with the text side only; the whole model
    (and so the vision tower) is loaded the first time images are encoded. A client whose image
    features are cached therefore never pays for the vision tower (in deployment every message
    is a fresh process).
    """

    def __init__(
        self,
        tokenizer: object,
        image_processor: object | None,
        device: torch.device,
        dtype: torch.dtype,
        identity: str,
        family: str,
        text: TextTower,
        logit_scale: float,
        model: PreTrainedModel | None = None,
        vision: VisionTower | None = None,
        load_model: Callable[[], PreTrainedModel] | None = None,
        load_processor: Callable[[], object] | None = None,
        preprocessing_config: dict | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self._image_processor = image_processor
        self._load_processor = load_processor
        # The image processor's config as stored (preprocessor_config.json): keys the feature
        # cache without building the processor (importing transformers' image processing
        # costs ~2 s per process, and a client with cached features never preprocesses).
        self._preprocessing_config = preprocessing_config
        self.device = device
        self.dtype = dtype
        self.identity = identity  # content hash of weights + config: keys the feature cache
        self.family = family  # clip | dual-encoder | siglip (from the model's class)
        self.text = text
        self._logit_scale = float(logit_scale)
        self._model = model
        self._vision = vision
        self._load_model = load_model

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: object,
        image_processor: object,
        device: torch.device,
        dtype: torch.dtype,
        identity: str,
        preprocessing_config: dict | None = None,
        load_processor: Callable[[], object] | None = None,
    ) -> Backbone:
        """A backbone around an already loaded (frozen) model."""
        towers = towers_for(model, tokenizer)
        scale = float(model.logit_scale.detach().exp().item())
        return cls(
            tokenizer, image_processor, device, dtype, identity, towers.family, towers.text,
            scale, model=model, vision=towers.vision, load_processor=load_processor,
            preprocessing_config=preprocessing_config,
        )  # fmt: skip

    @property
    def image_processor(self) -> object:
        """The model's image processor (built on first access when loaded from a directory)."""
        if self._image_processor is None:
            if self._load_processor is None:
                raise RuntimeError("this backbone has no image processor")
            self._image_processor = self._load_processor()
        return self._image_processor

    @property
    def model(self) -> PreTrainedModel:
        """The whole Hugging Face model (loaded on first access when only the text was)."""
        if self._model is None:
            if self._load_model is None:
                raise RuntimeError("this backbone has no model to load")
            self._model = self._load_model()
        return self._model

    @property
    def vision(self) -> VisionTower:
        """The vision tower (loads the whole model on first access)."""
        if self._vision is None:
            self._vision = towers_for(self.model, self.tokenizer).vision
        return self._vision

    @property
    def vision_loaded(self) -> bool:
        return self._vision is not None

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature exp(t) (SigLIP's logit bias shifts every class equally: unused)."""
        return self._logit_scale

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
        """A stable description of the image preprocessing (part of the feature-cache key): the
        stored preprocessor config where the model came from a directory, else the processor's
        own ``to_dict``."""
        config = self._preprocessing_config
        if config is None:
            config = self.image_processor.to_dict()
        return json.dumps(config, sort_keys=True, default=str)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Backbone's own image processor -> pixel tensor on the backbone's device and dtype."""
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    def encode_images(self, pixel_values: torch.Tensor, with_patches: bool) -> ImageFeatures:
        """L2-normalised global embedding (exactly ``get_image_features``, normalised) and,
        optionally, patch tokens in the joint space (per family: task/model/families,
        docs/method.md)."""
        return self.vision.encode(pixel_values, with_patches)

    @torch.no_grad()
    def encode_sentences(self, sentences: list[str]) -> torch.Tensor:
        """Unnormalised text features of whole sentences, exactly the model's own
        ``get_text_features``, padded the way the family was trained (SigLIP: to full length)."""
        if self.text.sentence_padding == "max_length":
            kwargs = {"padding": "max_length", "max_length": self.text.max_positions}
        else:
            kwargs = {"padding": True}
        inputs = self.tokenizer(sentences, truncation=True, return_tensors="pt", **kwargs)
        return self.text.encode_ids({k: v.to(self.device) for k, v in inputs.items()})


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


def load_backbone(cfg: ModelConfig, lazy_vision: bool = True) -> Backbone:
    """Load, freeze and place a supported dual encoder, its tokenizer and its image processor.

    Weights load in ``model.dtype`` (float32 by default, whatever dtype they are stored in);
    the model stays in eval mode, so BatchNorm statistics of CNN towers never change. From a
    local directory with safetensors weights only the text side is read now (``lazy_vision``);
    the vision tower follows on first use.
    """
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("model.dtype='float16' needs CUDA; use 'float32' or 'bfloat16' on CPU")
    source = _resolve_source(cfg.name)
    preprocessing = stored_preprocessing(Path(source))

    def load_processor() -> object:
        from transformers import AutoImageProcessor  # ~2 s of imports: only when needed

        try:
            return AutoImageProcessor.from_pretrained(source)
        except OSError as err:
            raise BackboneNotFoundError(_not_found_message(cfg.name, err)) from err

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
        image_processor = None if preprocessing is not None else load_processor()
    except OSError as err:
        raise BackboneNotFoundError(_not_found_message(cfg.name, err)) from err
    except ValueError as err:  # transformers: unknown model type
        raise UnsupportedModelError(f"model {cfg.name!r}: {err}") from err

    def load_model() -> PreTrainedModel:
        try:
            timm = timm_for_transformers() if has_timm_tower(config) else contextlib.nullcontext()
            with timm:
                model = AutoModel.from_pretrained(source, dtype=dtype)
        except OSError as err:
            raise BackboneNotFoundError(_not_found_message(cfg.name, err)) from err
        except ValueError as err:  # no matching class
            raise UnsupportedModelError(f"model {cfg.name!r}: {err}") from err
        return model.requires_grad_(False).eval().to(device)

    path = Path(source)
    identity = _identity(source, config)
    if lazy_vision and path.is_dir() and weight_files(path) is not None:
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(_unsupported(cfg.name, config.model_type))
        side = load_text_side(path, config, dtype).to(device)
        text = text_tower(side, config, tokenizer)
        family = FAMILY_OF_TYPE[config.model_type]
        scale = float(side.logit_scale.exp().item())
        return Backbone(
            tokenizer, image_processor, device, dtype, identity, family, text, scale,
            load_model=load_model, load_processor=load_processor,
            preprocessing_config=preprocessing,
        )  # fmt: skip
    return Backbone.from_model(
        load_model(), tokenizer, image_processor, device, dtype, identity, preprocessing,
        load_processor,
    )  # fmt: skip


def stored_preprocessing(path: Path) -> dict | None:
    """The image processor's config as saved in a model directory: preprocessor_config.json,
    or the ``image_processor`` entry of processor_config.json (newer transformers); None for a
    hub id or where neither is there."""
    single = path / "preprocessor_config.json"
    if single.is_file():
        return json.loads(single.read_text())
    joint = path / "processor_config.json"
    if joint.is_file():
        entry = json.loads(joint.read_text()).get("image_processor")
        return entry if isinstance(entry, dict) else None
    return None


def _unsupported(name: str, model_type: str) -> str:
    return (
        f"model {name!r} is of type {model_type!r}, not a supported dual encoder; supported: "
        f"{sorted(SUPPORTED_MODEL_TYPES)} (OpenCLIP checkpoints: convert them with "
        "`python -m task.model.families.convert_openclip`)"
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


def _identity(source: str, config: object) -> str:
    """Hash of what determines features: the config and the weights' bytes (or hub revision).

    A local directory's config is hashed as its config.json holds it (not as a loaded model
    re-serialises it, which depends on the load dtype and the transformers version)."""
    path = Path(source)
    raw = json.loads((path / "config.json").read_text()) if path.is_dir() else config.to_dict()
    kept = {k: v for k, v in raw.items() if "name_or_path" not in k}
    h = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode())
    if path.is_dir():
        for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(weights.name.encode())
            h.update(file_sha256_memo(weights).encode())
    else:
        h.update(source.encode())
        h.update(str(getattr(config, "_commit_hash", "") or "").encode())
    return h.hexdigest()[:16]


_BACKBONES: dict[tuple[str, str, str], Backbone] = {}


def get_backbone(cfg: ModelConfig) -> Backbone:
    """The backbone for ``cfg``, loaded once per process: a simulation actor (or a long-lived
    process) serves many clients and rounds."""
    key = (cfg.name, cfg.device, cfg.dtype)
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(cfg)
    return _BACKBONES[key]
