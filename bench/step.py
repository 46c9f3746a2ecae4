"""One local step of the benchmark: its inputs (a batch, live and cached image features), the
step itself on the fast or the naive path, its median time, how far the paths' losses differ,
the OT solvers' time, and the text encoder's FLOPs (the floor's numerator)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.machine import gemm_rate
from task.config import LossConfig, PromptConfig, TrainConfig
from task.data.records import load_rgb
from task.local.train import make_optimizer
from task.methods import get_method
from task.methods.heads import prompt_set
from task.methods.ot import patch_prompt_ot
from task.model.backbone import Backbone
from task.model.prompts import PromptLearner

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the repository
UCM = SHARED / "data" / "ucmerced"
UCM_CLASSES = [
    "agricultural", "airplane", "baseball diamond", "beach", "buildings", "chaparral",
    "dense residential", "forest", "freeway", "golf course", "harbor", "intersection",
    "medium residential", "mobile home park", "overpass", "parking lot", "river", "runway",
    "sparse residential", "storage tanks", "tennis court",
]  # fmt: skip
PHASES = ("image", "text_fwd", "loss_fwd", "backward", "optimizer")


def method_and_loss(spec: str) -> tuple[Any, LossConfig]:
    """``name`` or ``name:pot`` (the same method with POT's Sinkhorn for every OT problem)."""
    name, _, solver = spec.partition(":")
    return get_method(name), LossConfig(ot_solver=solver or "auto")


@dataclass
class StepInputs:
    """Everything one step needs, for both paths (features computed once, on the fly, in fp32)."""

    backbone: Backbone
    class_names: list[str]
    pixels: torch.Tensor
    live_global: torch.Tensor  # fp32, what the naive path computes every step
    live_patches: torch.Tensor  # fp32
    cached_global: torch.Tensor  # fp32, as task.local.features stores it
    cached_patches: torch.Tensor  # fp16, as task.local.features stores it
    labels: torch.Tensor


def image_size(backbone: Backbone) -> int:
    """Side of the image the processor produces (random pixels need it)."""
    crop = getattr(backbone.image_processor, "crop_size", None) or {}
    size = getattr(backbone.image_processor, "size", None) or {}
    for value in (crop.get("height"), size.get("height"), size.get("shortest_edge")):
        if value:
            return int(value)
    return 224


def make_inputs(backbone: Backbone, batch: int, real_images: bool) -> StepInputs:
    """A batch of ``batch`` images (UC Merced, round-robin over classes, or random pixels)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(batch) % len(UCM_CLASSES)
    if real_images:
        folders = sorted(p for p in UCM.iterdir() if p.is_dir())
        assert len(folders) == len(UCM_CLASSES), folders
        paths = [sorted(folders[int(c)].iterdir())[i // len(folders)] for i, c in enumerate(labels)]
        pixels = backbone.preprocess([load_rgb(str(p)) for p in paths])
    else:
        size = image_size(backbone)
        pixels = torch.randn(batch, 3, size, size, generator=g)
    feats = backbone.encode_images(pixels, with_patches=True)
    return StepInputs(
        backbone, list(UCM_CLASSES), pixels, feats.global_, feats.patches,
        feats.global_.clone(), feats.patches.to(torch.float16), labels,
    )  # fmt: skip


def _step(learner, method, loss_cfg, inputs: StepInputs, optimizer, naive: bool):
    """One local step; returns (loss, seconds per phase)."""
    backbone = inputs.backbone
    marks = [time.perf_counter()]
    if naive:
        feats = backbone.encode_images(inputs.pixels, with_patches=True)
        image_global, patches = feats.global_, feats.patches
    else:  # as task.local.train.batch_of: cached rows, patches widened to fp32
        image_global, patches = inputs.cached_global, inputs.cached_patches.float()
    if not method.needs_patches(loss_cfg):
        patches = None
    marks.append(time.perf_counter())
    prompt = learner(shared=True, personal=True)
    marks.append(time.perf_counter())
    obj = method.objective(loss_cfg, prompt, image_global, patches, inputs.labels,
                    backbone.logit_scale)  # fmt: skip
    marks.append(time.perf_counter())
    optimizer.zero_grad(set_to_none=True)
    obj.loss.backward()
    marks.append(time.perf_counter())
    optimizer.step()
    marks.append(time.perf_counter())
    phases = {name: b - a for name, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)}
    return obj.parts["loss"], phases


def step_learner(method_spec: str, inputs: StepInputs, naive: bool, buckets: bool | None = None):
    """A fresh learner and optimiser; ``buckets`` None keeps the learner's default grouping."""
    method, loss_cfg = method_and_loss(method_spec)
    learner = method.build_learner(inputs.backbone, inputs.class_names, PromptConfig())
    learner.full_length = naive
    if buckets is not None:
        learner.bucket_by_length = buckets
    optimizer = make_optimizer(list(learner.parameters()), TrainConfig())
    return method, loss_cfg, learner, optimizer


def time_step(
    method_spec: str,
    inputs: StepInputs,
    naive: bool,
    repeats: int,
    gemm_shape=None,
    buckets: bool | None = None,
) -> dict[str, Any]:
    """Median seconds of one step after one warm-up step (fresh learner, seed 0).

    ``gemm_shape`` (rows, width): also measure the GEMM rate right before every repeat, so the
    floor sees the same machine load as the step; its median rate is returned.
    """
    method, loss_cfg, learner, optimizer = step_learner(method_spec, inputs, naive, buckets)
    first_loss, _ = _step(learner, method, loss_cfg, inputs, optimizer, naive)
    totals, phases, rates = [], {k: [] for k in PHASES}, []
    for _ in range(repeats):
        if gemm_shape is not None:
            rates.append(gemm_rate(*gemm_shape))
        start = time.perf_counter()
        _, parts = _step(learner, method, loss_cfg, inputs, optimizer, naive)
        totals.append(time.perf_counter() - start)
        for k, v in parts.items():
            phases[k].append(v)
    return {
        "seconds": statistics.median(totals),
        "all_seconds": totals,
        "phases": {k: statistics.median(v) for k, v in phases.items()},
        "first_loss": first_loss,
        "gemm_rate": statistics.median(rates) if rates else None,
    }


def loss_agreement(method_spec: str, inputs: StepInputs) -> dict[str, float]:
    """Loss differences with the learner's initial prompts (no gradient):

    * truncation: cut vs 77-token prompts on the same fp32 image features (text part only);
    * fp16 cache: cached fp16 patches vs fp32 patches, both with cut prompts;
    * fast vs naive: the two full paths (cut + fp16 cache vs 77 tokens + live fp32).
    """
    method, loss_cfg = method_and_loss(method_spec)
    learner = method.build_learner(inputs.backbone, inputs.class_names, PromptConfig())
    scale = inputs.backbone.logit_scale
    use_patches = method.needs_patches(loss_cfg)
    with torch.no_grad():
        learner.full_length = False
        cut = learner(shared=True, personal=True)
        learner.full_length = True
        full = learner(shared=True, personal=True)

        def loss(text, image_global, patches) -> float:
            p = patches.float() if use_patches else None
            obj = method.objective(loss_cfg, text, image_global, p, inputs.labels, scale)
            return obj.parts["loss"]

        cut_fp32 = loss(cut, inputs.live_global, inputs.live_patches)
        full_fp32 = loss(full, inputs.live_global, inputs.live_patches)
        cut_fp16 = loss(cut, inputs.cached_global, inputs.cached_patches)
    text_diff = max(
        float((a - b).abs().max())
        for a, b in ((cut.shared, full.shared), (cut.personal, full.personal))
        if a is not None
    )
    patch_diff = float((inputs.cached_patches.float() - inputs.live_patches).abs().max())
    return {
        "loss": cut_fp16,
        "truncation_abs_diff": abs(cut_fp32 - full_fp32),
        "text_feature_max_abs_diff": text_diff,
        "fp16_cache_abs_diff": abs(cut_fp16 - cut_fp32),
        "fast_vs_naive_abs_diff": abs(cut_fp16 - full_fp32),
        "patch_fp16_max_abs_diff": patch_diff if use_patches else 0.0,
    }


def ot_solver_times(inputs: StepInputs, repeats: int) -> dict[str, float]:
    """Median ms of the head's batched OT (all images x classes, 2 prompts) per solver."""
    method = get_method("fedrsclip")
    learner = method.build_learner(inputs.backbone, inputs.class_names, PromptConfig())
    with torch.no_grad():
        prompts = prompt_set(learner(shared=True, personal=True), personalised=True)
    patches = inputs.cached_patches.float()
    cfg = LossConfig()
    out = {}
    for solver in ("auto", "pot"):
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            patch_prompt_ot(patches, prompts, cfg.ot_reg, cfg.ot_iters, cfg.ot_tol, solver=solver)
            times.append(time.perf_counter() - start)
        out[f"ot_{solver}_ms"] = 1000 * statistics.median(times[1:])
    return out


def prompt_lengths(learner: PromptLearner) -> list[int]:
    """Real tokens of every prompt the step encodes (prefix + context + class suffix)."""
    contexts = [c for c in (learner.shared_ctx, learner.personal_context()) if c is not None]
    n_prefix = learner.prefix_embeds.shape[1]
    if not learner.encoder.exact_cut:
        return [learner.encoder.max_positions] * (len(contexts) * len(learner.class_names))
    return [n_prefix + c.shape[0] + int(n) for c in contexts for n in learner.suffix_len.tolist()]


def text_flops(backbone: Backbone, lengths: list[int]) -> dict[str, float]:
    """Forward and backward FLOPs of the text encoder for prompts of the given token lengths.

    Forward per layer and token: Q, K, V and output projections 8W^2, MLP 4WI; attention scores
    and values 4LW (per sequence 4L^2 W); per sequence, the projection 2WD of the pooled row, and
    for a BERT-family tower its pooler dense layer 2W^2. The token embedding is a gather and
    layer norms/softmax are O(LW): not counted.
    Backward, ``frozen``: the CLIP weights are frozen, so the linear layers need only their input
    gradients (1x forward) and attention needs gradients of both operands of both products (2x).
    ``rule_of_thumb``: backward = 2x forward (as if weight gradients were also computed).
    """
    tc = backbone.model.config.text_config
    w, i, layers = tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers
    d = backbone.embed_dim
    n_seq, tokens = len(lengths), sum(lengths)
    pooler = (
        2 * w * w
        if hasattr(backbone.text, "text_model") and hasattr(backbone.text.text_model, "pooler")
        else 0
    )
    linear = layers * tokens * (8 * w * w + 4 * w * i) + n_seq * (2 * w * d + pooler)
    attention = layers * sum(4 * n * n * w for n in lengths)
    forward = linear + attention
    return {
        "forward": forward,
        "fwd_bwd_frozen": 2 * linear + 3 * attention,
        "fwd_bwd_rule_of_thumb": 3 * forward,
    }
