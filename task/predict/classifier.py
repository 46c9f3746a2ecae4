"""A trained model as a classifier: from the prompts of a run (the run path), frozen into an
export (task.predict.exported), and the checks that an export meets the backbone it is used with.

After training, one client's personalised model is the global shared prompt ``S`` plus its
private prompt ``P``; the global model is ``S`` alone. Both become fixed class text features once
the prompts are encoded, so inference needs only the frozen image encoder:

* :class:`PromptClassifier` holds the prompts' :class:`~task.model.prompts.PromptFeatures` and
  scores with :func:`task.methods.heads.compute_logits`, exactly as
  :func:`task.local.train.evaluate` does.
* :class:`~task.predict.exported.ExportedClassifier` holds only the tensors the heads read.

Both give the same logits for the same image features (tests/task/predict/test_classifier.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import torch
import transformers

from task.config import LossConfig, RunConfig
from task.local.evaluate import prompt_features
from task.methods import Method, get_method
from task.methods.heads import compute_logits, head_text, prompt_set
from task.model.backbone import Backbone
from task.model.prompts import PRIVATE_KEY, SHARED_KEY, PromptFeatures, load_prompts
from task.model.zeroshot import zeroshot_features
from task.predict.exported import ExportedClassifier, head_parts

log = logging.getLogger(__name__)


class BackboneMismatchError(ValueError):
    """The loaded backbone is not the one the classifier's text features were computed with."""


# -- scorers -------------------------------------------------------------------------------


class Scorer(Protocol):
    """Anything that turns image features into class logits."""

    class_names: list[str]

    @property
    def needs_patches(self) -> bool: ...

    def logits(self, image_global: torch.Tensor, patches: torch.Tensor | None) -> torch.Tensor: ...


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
        return "ot" in head_parts(self.head)

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
    learner = method.build_learner(
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
    mix: float | None = None,
) -> PromptClassifier:
    """The run path: personalised when ``private_ctx`` is given, else the global model;
    ``mix``: θ of a mixed personalised CLIP head (the client's, see load_run_model)."""
    method = get_method(cfg.method.name)
    feats = class_features(backbone, class_names, cfg, shared_ctx, private_ctx)
    if private_ctx is not None:
        feats.mix, feats.mix_renorm = mix, method.mix_renorm
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
    parts = head_parts(clf.head)
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
    mix: float | None = None,
) -> ExportedClassifier:
    """Compute the class text features once and write a self-contained export directory.

    ``model_name`` is recorded as given (default ``cfg.model.name``) so predict can find the
    backbone again; ``info`` (client id, run dir, ...) is stored under ``model`` in the JSON.
    """
    clf = classifier_from_prompts(backbone, class_names, cfg, shared_ctx, private_ctx, mix)
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
