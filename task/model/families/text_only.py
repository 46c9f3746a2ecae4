"""Load only the text side of a dual encoder (text model, text projection, logit scale) from a
local safetensors checkpoint.

A client whose image features are already cached never runs the vision tower, and in Flower's
Deployment Engine every message starts a fresh ClientApp process: building and reading the
vision tower there is pure start-up cost (for the stand-in it also means importing timm). Every
supported family keeps its text side under the same names (``text_model.*``,
``text_projection.*``, ``logit_scale``), so the subset is read by prefix and loaded strictly into
a text model built from ``config.text_config``; the features are those of the full model
(tests/task/model/test_backbone_lazy.py).
"""

from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from task.model.families.base import TextTower, UnsupportedModelError

TEXT_PREFIXES = ("text_model.", "text_projection.", "logit_scale")
# Text configs that AutoModel does not map (the tower classes the family models build).
TEXT_MODEL_CLASSES = {"siglip_text_model": "SiglipTextModel", "clip_text_model": "CLIPTextModel"}


def weight_files(source: Path) -> list[Path] | None:
    """The checkpoint's safetensors file(s): one file or the shards of an index; None if the
    directory holds none (then the whole model is loaded the usual way)."""
    single = source / "model.safetensors"
    if single.is_file():
        return [single]
    index = source / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [source / s for s in shards]
    return None


def read_subset(files: list[Path], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name.startswith(prefixes):
                    out[name] = f.get_tensor(name)
    return out


def _skip_init() -> contextlib.AbstractContextManager:
    """transformers' ``no_init_weights`` (allocate, do not initialise), where it exists."""
    for module in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return importlib.import_module(module).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


class TextSide(nn.Module):
    """What the text path needs of a dual encoder (the vision tower is not built)."""

    def __init__(
        self, text_model: nn.Module, text_projection: nn.Module | None, logit_scale: torch.Tensor
    ) -> None:
        super().__init__()
        self.text_model = text_model
        self.text_projection = text_projection
        self.logit_scale = nn.Parameter(logit_scale, requires_grad=False)


def load_text_side(source: Path, config: object, dtype: torch.dtype) -> TextSide:
    """Build ``config.text_config``'s model and load its tensors (strict), the projection and
    the logit scale from the checkpoint; frozen, eval mode, in ``dtype``."""
    import transformers

    files = weight_files(source)
    if files is None:
        raise FileNotFoundError(f"no safetensors weights in {source}")
    tensors = read_subset(files, TEXT_PREFIXES)
    class_name = TEXT_MODEL_CLASSES.get(config.text_config.model_type)
    with _skip_init():  # every weight is loaded below (checked): random init is wasted time
        if class_name is not None:
            text_model = getattr(transformers, class_name)(config.text_config)
        else:
            text_model = transformers.AutoModel.from_config(config.text_config)
    prefix = "text_model."
    state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = text_model.load_state_dict(state, strict=False, assign=True)
    buffers = {name for name, _ in text_model.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise UnsupportedModelError(
            f"{source}: the text tensors do not fit {type(text_model).__name__} "
            f"(missing {sorted(set(missing) - buffers)[:5]}, unexpected {unexpected[:5]})"
        )
    projection = None
    if "text_projection.weight" in tensors:
        weight = tensors["text_projection.weight"]
        bias = tensors.get("text_projection.bias")
        projection = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        projection.load_state_dict({"weight": weight} | ({} if bias is None else {"bias": bias}))
    if "logit_scale" not in tensors:
        raise UnsupportedModelError(f"{source}: the checkpoint holds no logit_scale")
    side = TextSide(text_model, projection, tensors["logit_scale"].float().reshape(()))
    return side.to(dtype).requires_grad_(False).eval()


def text_tower(side: TextSide, config: object, tokenizer: object) -> TextTower:
    """The family's text tower over a TextSide (the family from ``config.model_type``)."""
    from task.model.families.clip import ClipTextTower, _pad_id
    from task.model.families.dual_encoder import _text_tower
    from task.model.families.siglip import siglip_text_tower

    kind = getattr(config, "model_type", "")
    if kind == "clip":
        return ClipTextTower(
            side.text_model, side.text_projection, _pad_id(tokenizer, config.text_config)
        )
    if kind == "vision-text-dual-encoder":
        return _text_tower(side.text_model, side.text_projection, tokenizer, config)
    if kind == "siglip":
        return siglip_text_tower(side.text_model, tokenizer, config)
    raise UnsupportedModelError(f"no text-only loader for model type {kind!r}")
