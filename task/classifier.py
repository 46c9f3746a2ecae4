"""A trained model as a classifier: from prompts (the run path) or from an export directory.

After training, one client's personalised model is the global shared prompt ``S`` plus its
private prompt ``P``; the global model is ``S`` alone. Both become fixed class text features once
the prompts are encoded, so inference needs only the frozen image encoder:

* :class:`PromptClassifier` holds the prompts' :class:`~task.prompt_learner.PromptFeatures` and
  scores with :func:`task.losses.compute_logits`, exactly as :func:`task.train.evaluate` does.
* :class:`ExportedClassifier` holds only the tensors the heads read (the CLIP-head class features
  and, for an OT head, each class's prompt set) and is saved as a self-contained directory::

      classifier.safetensors   clip_text [C, D] (CLIP head), ot_prompts [C, M, D] (OT head), fp32
      classifier.json          class names, head, logit scale, OT settings, backbone identity,
                               image preprocessing, format version (see docs/predict.md)

Both give the same logits for the same image features (tests/task/test_classifier.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from task.backbone import Backbone
from task.config import LossConfig, RunConfig
from task.data.records import CorruptImageError, load_rgb
from task.data.sources import IMAGE_EXTENSIONS
from task.learner import build_learner, load_prompts
from task.losses import compute_logits, head_text, prompt_set
from task.methods import Method, get_method
from task.ot import patch_prompt_ot
from task.prompt_learner import PRIVATE_KEY, SHARED_KEY, PromptFeatures
from task.train import prompt_features
from task.zeroshot import zeroshot_features

log = logging.getLogger(__name__)

FORMAT = "fedrsclip-classifier"
FORMAT_VERSION = 1
WEIGHTS_NAME = "classifier.safetensors"
META_NAME = "classifier.json"
CLIP_TEXT_KEY = "clip_text"
OT_PROMPTS_KEY = "ot_prompts"


class ExportError(ValueError):
    """An export directory is missing, incomplete, or of an unknown format version."""


class BackboneMismatchError(ValueError):
    """The loaded backbone is not the one the classifier's text features were computed with."""


# -- scorers -------------------------------------------------------------------------------


class Scorer(Protocol):
    """Anything that turns image features into class logits."""

    class_names: list[str]

    @property
    def needs_patches(self) -> bool: ...

    def logits(self, image_global: torch.Tensor, patches: torch.Tensor | None) -> torch.Tensor: ...


def _head_parts(head: str) -> list[str]:
    return head.split("+")


@dataclass
class PromptClassifier:
    """The run path: class features straight from the prompts, scored by compute_logits."""

    class_names: list[str]
    feats: PromptFeatures
    personalised: bool
    head: str
    loss: LossConfig
    logit_scale: float

    @property
    def needs_patches(self) -> bool:
        return "ot" in _head_parts(self.head)

    @torch.no_grad()
    def logits(self, image_global: torch.Tensor, patches: torch.Tensor | None) -> torch.Tensor:
        out, _ = compute_logits(
            self.head,
            self.feats,
            image_global,
            patches,
            self.logit_scale,
            self.loss,
            self.personalised,
        )
        return out


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
    backbone: dict[str, Any]  # name (as given), identity (task.backbone hash), dtype
    preprocessing: dict[str, Any]  # the image processor's to_dict()
    model: dict[str, Any] = field(default_factory=dict)  # method, personalised, client, ...

    @property
    def needs_patches(self) -> bool:
        return "ot" in _head_parts(self.head)

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
        """Class logits [B, C]: the same equations as task.losses.compute_logits."""
        parts = []
        if "clip" in _head_parts(self.head):
            parts.append(self.logit_scale * image_global @ self.clip_text.t())
        if "ot" in _head_parts(self.head):
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
        if "clip" in _head_parts(head) and (clip_text is None or clip_text.shape[0] != n):
            raise ExportError(f"{weights_path}: head {head!r} needs {CLIP_TEXT_KEY} [{n}, D]")
        if "ot" in _head_parts(head) and (ot_prompts is None or ot_prompts.shape[0] != n):
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


# -- building from prompts -----------------------------------------------------------------


def class_features(
    backbone: Backbone,
    class_names: Sequence[str],
    cfg: RunConfig,
    shared_ctx: torch.Tensor | None,
    private_ctx: torch.Tensor | None = None,
) -> PromptFeatures:
    """Encode the trained prompts once: shared (global) and, with ``private_ctx``, personal.

    ``shared_ctx`` is the run's final global shared prompt ``S`` [h, W]; ``private_ctx`` one
    client's private prompt ``P`` [h, W] or None for the global model. A method that trains
    nothing (zeroshot) uses its template features and takes no tensors.
    """
    method = get_method(cfg.method.name)
    if not method.trains:
        return zeroshot_features(backbone, list(class_names))
    if method.has_shared and shared_ctx is None:
        raise ValueError(f"method {method.name!r} needs the run's shared prompt ({SHARED_KEY})")
    if private_ctx is not None and not method.has_private:
        raise ValueError(f"method {method.name!r} has no private prompt, but one was given")
    learner = build_learner(
        method,
        backbone,
        class_names,
        cfg.prompt,
        seed=cfg.train.seed,
        personal=private_ctx is not None,
    )
    state = {}
    if method.has_shared:
        state[SHARED_KEY] = shared_ctx
    if private_ctx is not None:
        state[PRIVATE_KEY] = private_ctx
    load_prompts(learner, state)
    return prompt_features(learner)


def classifier_from_prompts(
    backbone: Backbone,
    class_names: Sequence[str],
    cfg: RunConfig,
    shared_ctx: torch.Tensor | None,
    private_ctx: torch.Tensor | None = None,
) -> PromptClassifier:
    """The run path: personalised when ``private_ctx`` is given, else the global model."""
    method = get_method(cfg.method.name)
    feats = class_features(backbone, class_names, cfg, shared_ctx, private_ctx)
    return PromptClassifier(
        class_names=list(class_names),
        feats=feats,
        personalised=private_ctx is not None,
        head=method.head_for(cfg.loss),
        loss=cfg.loss,
        logit_scale=backbone.logit_scale,
    )


def freeze(
    clf: PromptClassifier,
    backbone: Backbone,
    model_name: str,
    info: dict[str, Any] | None = None,
) -> ExportedClassifier:
    """Turn a prompt classifier into fixed tensors (what the heads actually read)."""
    parts = _head_parts(clf.head)
    clip_text = ot_prompts = None
    if "clip" in parts:
        clip_text = head_text(clf.feats, clf.personalised).detach().float().cpu().clone()
    if "ot" in parts:
        ot_prompts = prompt_set(clf.feats, clf.personalised).detach().float().cpu().clone()
    model = {"personalised": clf.personalised, **(info or {})}
    model["created_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    return ExportedClassifier(
        class_names=list(clf.class_names),
        head=clf.head,
        logit_scale=clf.logit_scale,
        ot_reg=clf.loss.ot_reg,
        ot_iters=clf.loss.ot_iters,
        ot_tol=clf.loss.ot_tol,
        clip_text=clip_text,
        ot_prompts=ot_prompts,
        backbone={
            "name": model_name,
            "identity": backbone.identity,
            "dtype": str(backbone.dtype).removeprefix("torch."),
        },
        preprocessing=preprocessing_dict(backbone.image_processor),
        model=model,
    )


def export_classifier(
    backbone: Backbone,
    class_names: Sequence[str],
    cfg: RunConfig,
    shared_ctx: torch.Tensor | None,
    private_ctx: torch.Tensor | None,
    out_dir: str | os.PathLike[str],
    model_name: str | None = None,
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> ExportedClassifier:
    """Compute the class text features once and write a self-contained export directory.

    ``model_name`` is recorded as given (default ``cfg.model.name``) so predict can find the
    backbone again; ``info`` (client id, run dir, ...) is stored under ``model`` in the JSON.
    """
    clf = classifier_from_prompts(backbone, class_names, cfg, shared_ctx, private_ctx)
    method: Method = get_method(cfg.method.name)
    details = {
        "method": method.name,
        "fusion": cfg.prompt.fusion,
        "n_ctx": cfg.prompt.n_ctx,
        **(info or {}),
    }
    exported = freeze(clf, backbone, model_name or cfg.model.name, details)
    exported.save(out_dir, overwrite=overwrite)
    return exported


# -- backbone checks and preprocessing -----------------------------------------------------


def check_backbone(clf: ExportedClassifier, backbone: Backbone, allow_mismatch: bool) -> list[str]:
    """Compare the loaded backbone with the export's; raise, or return warnings when allowed."""
    problems = []
    expected = clf.backbone.get("identity")
    if expected != backbone.identity:
        problems.append(
            f"backbone identity {backbone.identity} differs from the export's {expected} "
            f"(exported with model {clf.backbone.get('name')!r}): the class text features were "
            "computed with other weights, so predictions are not meaningful"
        )
    dims = _text_dim(clf)
    proj = backbone.embed_dim
    if dims is not None and dims != proj:
        raise BackboneMismatchError(
            f"the export's text features have dimension {dims} but the loaded backbone projects "
            f"to {proj}; load the model the export was made with (--model)"
        )
    if problems and not allow_mismatch:
        raise BackboneMismatchError(
            problems[0] + ". Pass --model with the right model directory, or "
            "--allow-backbone-mismatch to predict anyway"
        )
    return problems


def _text_dim(clf: ExportedClassifier) -> int | None:
    t = clf.clip_text if clf.clip_text is not None else clf.ot_prompts
    return None if t is None else int(t.shape[-1])


def preprocessing_dict(processor: object) -> dict[str, Any]:
    """The image processor's settings as plain JSON (tuples become lists)."""
    return json.loads(json.dumps(processor.to_dict(), sort_keys=True, default=str))


def image_processor_from_dict(config: dict[str, Any], fallback: object) -> object:
    """Rebuild the export's image processor; fall back to the backbone's when unknown."""
    name = config.get("image_processor_type")
    cls = getattr(transformers, name, None) if name else None
    if cls is None or not hasattr(cls, "from_dict"):
        log.warning("unknown image processor %r in export; using the backbone's own", name)
        return fallback
    return cls.from_dict(dict(config))


# -- prediction ----------------------------------------------------------------------------


@dataclass
class Prediction:
    """Top-k classes of one image, most probable first."""

    image: str
    classes: list[str]
    indices: list[int]
    probs: list[float]


@dataclass
class PredictionReport:
    predictions: list[Prediction]
    skipped: list[tuple[str, str]]  # (image, reason)


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files as given, folders searched recursively for image files (sorted); no duplicates.

    Raises FileNotFoundError naming every input that does not exist.
    """
    out: list[str] = []
    seen: set[str] = set()
    missing = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            found = [path]
        else:
            missing.append(str(raw))
            continue
        for p in found:
            key = str(p.resolve())
            if key not in seen:
                seen.add(key)
                out.append(str(p))
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    return out


def predict_images(
    scorer: Scorer,
    backbone: Backbone,
    paths: Sequence[str],
    top_k: int = 5,
    batch_size: int = 32,
    image_processor: object | None = None,
    progress: bool | None = None,
) -> PredictionReport:
    """Top-k predictions for every readable image; unreadable ones are skipped and reported.

    ``image_processor`` defaults to the backbone's own. ``progress``: None shows a tqdm bar
    (stderr) only when there is more than one batch.
    """
    processor = image_processor or backbone.image_processor
    k = max(1, min(top_k, len(scorer.class_names)))
    if progress is None:
        progress = len(paths) > batch_size
    predictions: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    try:
        for start in range(0, len(paths), batch_size):
            images, names = [], []
            for path in paths[start : start + batch_size]:
                try:
                    images.append(load_rgb(path))
                    names.append(path)
                except CorruptImageError as err:
                    reason = str(err.__cause__ or err)
                    skipped.append((path, reason))
                    msg = f"skipping unreadable image {path}: {reason}"
                    if progress:
                        bar.write(f"warning: {msg}", file=sys.stderr)
                    else:
                        log.warning(msg)
            if images:
                predictions.extend(_predict_batch(scorer, backbone, processor, images, names, k))
            bar.update(len(paths[start : start + batch_size]))
    finally:
        bar.close()
    return PredictionReport(predictions, skipped)


def _predict_batch(
    scorer: Scorer,
    backbone: Backbone,
    processor: object,
    images: list,
    names: list[str],
    k: int,
) -> list[Prediction]:
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    feats = backbone.encode_images(pixels.to(backbone.device, backbone.dtype), scorer.needs_patches)
    logits = scorer.logits(feats.global_, feats.patches)
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    top = probs.topk(k, dim=-1)
    out = []
    for name, values, idx in zip(names, top.values.tolist(), top.indices.tolist(), strict=True):
        out.append(Prediction(name, [scorer.class_names[i] for i in idx], idx, values))
    return out
