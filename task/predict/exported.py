"""A trained model as fixed tensors: the self-contained export directory and its scorer.

An export holds only what the heads read (the CLIP-head class features and, for an OT head, each
class's prompt set) and scores images with the same equations as
task.methods.heads.compute_logits::

    classifier.safetensors   clip_text [C, D] (CLIP head), ot_prompts [C, M, D] (OT head), fp32
    classifier.json          class names, head, logit scale, OT settings, backbone identity,
                             image preprocessing, format version (see docs/predict.md)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from task.methods.heads import head_parts
from task.methods.ot import patch_prompt_ot

FORMAT = "fedrsclip-classifier"
FORMAT_VERSION = 1
WEIGHTS_NAME = "classifier.safetensors"
META_NAME = "classifier.json"
CLIP_TEXT_KEY = "clip_text"
OT_PROMPTS_KEY = "ot_prompts"


class ExportError(ValueError):
    """An export directory is missing, incomplete, or of an unknown format version."""


@dataclass
class ExportedClassifier:
    """Fixed class text features plus everything needed to score images with them."""

    class_names: list[str]
    head: str  # clip | ot | clip+ot
    logit_scale: float
    ot_reg: float
    ot_iters: int
    ot_tol: float
    clip_text: torch.Tensor | None  # [C, D] L2-normalised, when the head has "clip"
    ot_prompts: torch.Tensor | None  # [C, M, D] L2-normalised, when the head has "ot"
    backbone: dict[str, Any]  # name (as given), identity (task.model.backbone hash), dtype
    preprocessing: dict[str, Any]  # the image processor's to_dict()
    model: dict[str, Any] = field(default_factory=dict)  # method, personalised, client, ...

    @property
    def needs_patches(self) -> bool:
        return "ot" in head_parts(self.head)

    @property
    def device(self) -> torch.device:
        t = self.clip_text if self.clip_text is not None else self.ot_prompts
        return t.device

    def to(self, device: torch.device | str) -> ExportedClassifier:
        """Move the text features (in place) and return self."""
        if self.clip_text is not None:
            self.clip_text = self.clip_text.to(device)
        if self.ot_prompts is not None:
            self.ot_prompts = self.ot_prompts.to(device)
        return self

    @torch.no_grad()
    def logits(self, image_global: torch.Tensor, patches: torch.Tensor | None) -> torch.Tensor:
        """Class logits [B, C]: the same equations as task.methods.heads.compute_logits."""
        parts = []
        if "clip" in head_parts(self.head):
            parts.append(self.logit_scale * image_global @ self.clip_text.t())
        if "ot" in head_parts(self.head):
            if patches is None:
                raise ValueError(f"head {self.head!r} needs patch features")
            ot = patch_prompt_ot(patches, self.ot_prompts, self.ot_reg, self.ot_iters, self.ot_tol)
            parts.append(self.logit_scale * ot.similarity)
        return torch.stack(parts).mean(dim=0)

    # -- persistence ----------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        tensors = {}
        if self.clip_text is not None:
            tensors[CLIP_TEXT_KEY] = list(self.clip_text.shape)
        if self.ot_prompts is not None:
            tensors[OT_PROMPTS_KEY] = list(self.ot_prompts.shape)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class_names": self.class_names,
            "head": self.head,
            "logit_scale": self.logit_scale,
            "loss": {"ot-reg": self.ot_reg, "ot-iters": self.ot_iters, "ot-tol": self.ot_tol},
            "tensors": tensors,
            "backbone": self.backbone,
            "preprocessing": self.preprocessing,
            "model": self.model,
        }

    def save(self, out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write classifier.safetensors + classifier.json into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ExportError(f"export path {str(out)!r} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise ExportError(
                f"export directory {str(out)!r} is not empty; choose a new directory or "
                "pass overwrite (--force)"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            tensors = {}
            if self.clip_text is not None:
                tensors[CLIP_TEXT_KEY] = self.clip_text.detach().float().cpu().contiguous()
            if self.ot_prompts is not None:
                tensors[OT_PROMPTS_KEY] = self.ot_prompts.detach().float().cpu().contiguous()
            save_file(
                tensors,
                str(tmp / WEIGHTS_NAME),
                metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)},
            )
            text = json.dumps(self.metadata(), indent=2, sort_keys=False, default=str)
            (tmp / META_NAME).write_text(text + "\n", encoding="utf-8")
            out.mkdir(parents=True, exist_ok=True)
            for name in (WEIGHTS_NAME, META_NAME):
                os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    @classmethod
    def load(cls, export_dir: str | os.PathLike[str]) -> ExportedClassifier:
        """Read an export directory written by :meth:`save` (tensors on CPU)."""
        root = Path(export_dir)
        meta_path, weights_path = root / META_NAME, root / WEIGHTS_NAME
        if not root.is_dir():
            raise ExportError(f"export directory {str(root)!r} does not exist")
        for p in (meta_path, weights_path):
            if not p.is_file():
                raise ExportError(
                    f"{str(root)!r} is not a classifier export: {p.name} is missing "
                    f"(an export holds {META_NAME} and {WEIGHTS_NAME}; write one with "
                    "`fedrsclip-export`)"
                )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ExportError(f"{meta_path} is not valid JSON: {err}") from err
        if meta.get("format") != FORMAT:
            raise ExportError(f"{meta_path} is not a {FORMAT} file")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ExportError(
                f"{meta_path} has format_version {version!r}; this code reads version "
                f"{FORMAT_VERSION} (re-export with this version of fedrsclip)"
            )
        with safe_open(str(weights_path), framework="pt") as f:
            keys = set(f.keys())
            clip_text = f.get_tensor(CLIP_TEXT_KEY) if CLIP_TEXT_KEY in keys else None
            ot_prompts = f.get_tensor(OT_PROMPTS_KEY) if OT_PROMPTS_KEY in keys else None
        head = meta["head"]
        n = len(meta["class_names"])
        if "clip" in head_parts(head) and (clip_text is None or clip_text.shape[0] != n):
            raise ExportError(f"{weights_path}: head {head!r} needs {CLIP_TEXT_KEY} [{n}, D]")
        if "ot" in head_parts(head) and (ot_prompts is None or ot_prompts.shape[0] != n):
            raise ExportError(f"{weights_path}: head {head!r} needs {OT_PROMPTS_KEY} [{n}, M, D]")
        loss = meta["loss"]
        return cls(
            class_names=list(meta["class_names"]),
            head=head,
            logit_scale=float(meta["logit_scale"]),
            ot_reg=float(loss["ot-reg"]),
            ot_iters=int(loss["ot-iters"]),
            ot_tol=float(loss["ot-tol"]),
            clip_text=clip_text,
            ot_prompts=ot_prompts,
            backbone=dict(meta["backbone"]),
            preprocessing=dict(meta["preprocessing"]),
            model=dict(meta.get("model", {})),
        )


load_classifier = ExportedClassifier.load
