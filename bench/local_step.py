"""One local training step: this project's path vs the naive path vs the FLOP floor.

Run: ``python -m bench.local_step`` (or ``python -m bench``); writes
bench/results/local_step.json (``--out``) and prints a markdown table. docs/performance.md holds
the numbers of a run and how to read them.

* fast path: cached frozen image features (global fp32 + patches fp16, as task.features stores
  them), prompts cut to the longest real prompt (``learner.full_length = False``), the method's
  ``task.losses.objective``, backward, optimiser step;
* naive path: the image encoder on the pixel batch every step and prompts padded to the text
  tower's full length (``learner.full_length = True``: 77 tokens for CLIP, 512 for the stand-in's
  BERT), with the same method, prompts, objective and optimiser;
* fast path without length buckets (``learner.bucket_by_length = False``: every prompt padded to
  the longest one) for the before/after of that exact saving;
* floor: text-encoder forward + backward FLOPs at the real prompt length over the GEMM rate
  measured on this machine, interleaved with the fast step's repeats (same threads, same load).

Models: the stand-in rs-lit-b0-minilm (VisionTextDualEncoder: EfficientNet-Lite0 + 6-layer,
384-wide BERT text tower), the older CLIPModel stand-in rs-tinyclip-aid, and a randomly
initialised CLIP with ViT-B/16's shapes.

Losses agree: the cut and the full-length prompts give the same loss on identical fp32 image
features (``truncation_abs_diff``); the fp16 patch cache is reported separately
(``fp16_cache_abs_diff``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from task.backbone import Backbone, load_backbone
from task.backbones import towers_for
from task.config import LossConfig, ModelConfig, PromptConfig, TrainConfig
from task.data.records import load_rgb
from task.losses import objective, prompt_set
from task.methods import build_learner, get_method
from task.ot import patch_prompt_ot
from task.prompt_learner import PromptLearner
from task.train import make_optimizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STAND_IN = SHARED / "models" / "rs-lit-b0-minilm"
TINYCLIP = SHARED / "models" / "rs-tinyclip-aid"
UCM = SHARED / "data" / "ucmerced"
UCM_CLASSES = [
    "agricultural", "airplane", "baseball diamond", "beach", "buildings", "chaparral",
    "dense residential", "forest", "freeway", "golf course", "harbor", "intersection",
    "medium residential", "mobile home park", "overpass", "parking lot", "river", "runway",
    "sparse residential", "storage tanks", "tennis court",
]  # fmt: skip
# fedrsclip: S + P, CE (+ global CE), DPA, OT head + OT loss (exact two-point OT for M = 2);
# fedrsclip:pot the same with POT's log-Sinkhorn; fedrsclip-noot: S + P and DPA, no OT at all;
# promptfl: one shared prompt, CE only.
METHODS = ("fedrsclip", "fedrsclip:pot", "fedrsclip-noot", "promptfl")
NAIVE_METHODS = ("fedrsclip", "promptfl")
TARGET_SPEEDUP = 15.0
TARGET_FLOOR_RATIO = 1.5
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
    cached_global: torch.Tensor  # fp32, as task.features stores it
    cached_patches: torch.Tensor  # fp16, as task.features stores it
    labels: torch.Tensor


def vitb16_backbone(tokenizer_dir: Path | None) -> Backbone:
    """A randomly initialised CLIP with ViT-B/16 dimensions and the real CLIP tokenizer.

    Without ``tokenizer_dir`` (no ../shared), a tiny word-level stand-in tokenizer from testkit
    is used: class names then take fewer tokens than with CLIP's BPE, so the floor is lower too.
    """
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        from testkit.tiny_tokenizers import make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer()
    config = CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                     "num_attention_heads": 8, "vocab_size": 49408, "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
        projection_dim=512,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config).eval().requires_grad_(False)
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=224)
    towers = towers_for(model, tokenizer)
    return Backbone(
        model, tokenizer, processor, torch.device("cpu"), torch.float32, "random-vit-b16",
        towers.family, towers.text, towers.vision,
    )  # fmt: skip


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
    else:  # as task.train.batch_of: cached rows, patches widened to fp32
        image_global, patches = inputs.cached_global, inputs.cached_patches.float()
    if not method.needs_patches(loss_cfg):
        patches = None
    marks.append(time.perf_counter())
    prompt = learner(shared=True, personal=True)
    marks.append(time.perf_counter())
    obj = objective(method, loss_cfg, prompt, image_global, patches, inputs.labels,
                    backbone.logit_scale)  # fmt: skip
    marks.append(time.perf_counter())
    optimizer.zero_grad(set_to_none=True)
    obj.loss.backward()
    marks.append(time.perf_counter())
    optimizer.step()
    marks.append(time.perf_counter())
    phases = {name: b - a for name, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)}
    return obj.parts["loss"], phases


def _learner(method_spec: str, inputs: StepInputs, naive: bool, buckets: bool = True):
    method, loss_cfg = method_and_loss(method_spec)
    learner = build_learner(method, inputs.backbone, inputs.class_names, PromptConfig())
    learner.full_length = naive
    learner.bucket_by_length = buckets
    optimizer = make_optimizer(list(learner.parameters()), TrainConfig())
    return method, loss_cfg, learner, optimizer


def time_step(
    method_spec: str,
    inputs: StepInputs,
    naive: bool,
    repeats: int,
    gemm_shape=None,
    buckets: bool = True,
) -> dict[str, Any]:
    """Median seconds of one step after one warm-up step (fresh learner, seed 0).

    ``gemm_shape`` (rows, width): also measure the GEMM rate right before every repeat, so the
    floor sees the same machine load as the step; its median rate is returned.
    """
    method, loss_cfg, learner, optimizer = _learner(method_spec, inputs, naive, buckets)
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
    learner = build_learner(method, inputs.backbone, inputs.class_names, PromptConfig())
    scale = inputs.backbone.logit_scale
    use_patches = method.needs_patches(loss_cfg)
    with torch.no_grad():
        learner.full_length = False
        cut = learner(shared=True, personal=True)
        learner.full_length = True
        full = learner(shared=True, personal=True)

        def loss(text, image_global, patches) -> float:
            p = patches.float() if use_patches else None
            obj = objective(method, loss_cfg, text, image_global, p, inputs.labels, scale)
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
    learner = build_learner(method, inputs.backbone, inputs.class_names, PromptConfig())
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
    pooler = 2 * w * w if hasattr(backbone.text, "text_model") and hasattr(
        backbone.text.text_model, "pooler"
    ) else 0
    linear = layers * tokens * (8 * w * w + 4 * w * i) + n_seq * (2 * w * d + pooler)
    attention = layers * sum(4 * n * n * w for n in lengths)
    forward = linear + attention
    return {
        "forward": forward,
        "fwd_bwd_frozen": 2 * linear + 3 * attention,
        "fwd_bwd_rule_of_thumb": 3 * forward,
    }


def gemm_rate(rows: int, width: int, repeats: int = 10, trials: int = 3) -> float:
    """Best fp32 FLOP/s of a [rows, W] x [W, 4W] matmul (the MLP shape of the text step)."""
    a, b = torch.randn(rows, width), torch.randn(width, 4 * width)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * rows * width * 4 * width / best


def cpu_snapshot() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, this process's CPU seconds, wall seconds)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        busy = float("nan")
    return busy, time.process_time(), time.perf_counter()


def others_load(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Cores that other processes kept busy between two snapshots (contention indicator)."""
    wall = after[2] - before[2]
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / max(wall, 1e-9)


def wait_for_idle(max_wait_s: float, threshold: float = 0.2, window_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold`` cores."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        before = cpu_snapshot()
        time.sleep(window_s)
        load = others_load(before, cpu_snapshot())
        if load < threshold or time.perf_counter() >= deadline:
            return load


def run_model(
    name: str,
    backbone: Backbone,
    real_images: bool,
    batch: int = 32,
    repeats: int = 5,
    naive_repeats: int = 2,
    methods: tuple[str, ...] | list[str] = METHODS,
    naive_methods: tuple[str, ...] | list[str] = NAIVE_METHODS,
) -> list[dict[str, Any]]:
    """Benchmark rows (one per method) for one backbone; the core of the command."""
    inputs = make_inputs(backbone, batch, real_images)
    width = backbone.text_width
    n_classes = len(inputs.class_names)
    rows = []
    for spec in methods:
        method, _ = method_and_loss(spec)
        _, _, learner, _ = _learner(spec, inputs, naive=False)
        lengths = prompt_lengths(learner)
        length = max(lengths)
        n_prompts = 2 if method.has_private else 1
        before = cpu_snapshot()
        fast = time_step(spec, inputs, False, repeats, gemm_shape=(sum(lengths), width))
        fast_others = others_load(before, cpu_snapshot())
        unbucketed = time_step(spec, inputs, False, repeats, buckets=False)
        naive = time_step(spec, inputs, True, naive_repeats) if spec in naive_methods else None
        flops = text_flops(backbone, lengths)
        floor = flops["fwd_bwd_frozen"] / fast["gemm_rate"]
        row = {
            "model": name, "method": spec, "prompts_per_class": n_prompts, "classes": n_classes,
            "batch": batch, "prompt_tokens": length,
            "prompt_tokens_mean": sum(lengths) / len(lengths),
            "naive_prompt_tokens": backbone.text.max_positions,
            "fast_s": fast["seconds"], "fast_min_s": min(fast["all_seconds"]),
            "no_buckets_s": unbucketed["seconds"],
            "no_buckets_all_s": unbucketed["all_seconds"],
            "buckets_speedup": unbucketed["seconds"] / fast["seconds"],
            "fast_all_s": fast["all_seconds"], "others_load_cores_during_fast": fast_others,
            "fast_phases_s": fast["phases"],
            "naive_s": naive["seconds"] if naive else None,
            "naive_all_s": naive["all_seconds"] if naive else None,
            "naive_phases_s": naive["phases"] if naive else None,
            "speedup_vs_naive": naive["seconds"] / fast["seconds"] if naive else None,
            "text_gflop_fwd": flops["forward"] / 1e9,
            "text_gflop_fwd_bwd": flops["fwd_bwd_frozen"] / 1e9,
            "gemm_gflops": fast["gemm_rate"] / 1e9,
            "floor_s": floor,
            "fast_over_floor": fast["seconds"] / floor,
            "floor_rule_of_thumb_s": flops["fwd_bwd_rule_of_thumb"] / fast["gemm_rate"],
            "fast_over_floor_rule_of_thumb": fast["seconds"] * fast["gemm_rate"]
            / flops["fwd_bwd_rule_of_thumb"],
            "step_loss_fast": fast["first_loss"],
            "step_loss_naive": naive["first_loss"] if naive else None,
            "step_loss_abs_diff": abs(fast["first_loss"] - naive["first_loss"]) if naive else None,
            **loss_agreement(spec, inputs),
        }  # fmt: skip
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("all_s")}), flush=True)
    ot_times = ot_solver_times(inputs, repeats)
    print(json.dumps({"model": name, **ot_times}), flush=True)
    for r in rows:
        r.update(ot_times)
    by_method = {r["method"]: r for r in rows}
    for r in rows:
        r["fast_over_noot"] = None
        if "fedrsclip-noot" in by_method and r["method"].startswith("fedrsclip"):
            r["fast_over_noot"] = r["fast_s"] / by_method["fedrsclip-noot"]["fast_s"]
    return rows


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, checked on the ViT-B/16-shaped fedrsclip row."""
    row = next(
        (r for r in rows if r["model"].startswith("ViT-B/16") and r["method"] == "fedrsclip"), None
    )
    if row is None or row["speedup_vs_naive"] is None:
        return {}
    return {
        "row": f"{row['model']} / {row['method']}",
        "speedup_vs_naive": row["speedup_vs_naive"],
        "speedup_target": TARGET_SPEEDUP,
        "speedup_met": row["speedup_vs_naive"] >= TARGET_SPEEDUP,
        "fast_over_floor": row["fast_over_floor"],
        "floor_target": TARGET_FLOOR_RATIO,
        "floor_met": row["fast_over_floor"] <= TARGET_FLOOR_RATIO,
        "fast_over_floor_rule_of_thumb": row["fast_over_floor_rule_of_thumb"],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _f(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The main table, then the fast path's time per phase."""
    out = [
        "| model | method | prompts x classes | tokens (mean / max / naive) | fast step (s) | "
        "no buckets (s) | naive step (s) | speed-up | floor (s) | fast / floor | "
        "fast / floor (bwd=2x fwd) | \\|Δloss\\| cut vs full | \\|Δloss\\| fp16 cache | "
        "\\|Δloss\\| first step fast vs naive |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['method']} | {r['prompts_per_class']} x {r['classes']} | "
            f"{r.get('prompt_tokens_mean', r['prompt_tokens']):.1f} / {r['prompt_tokens']} / "
            f"{r['naive_prompt_tokens']} | {r['fast_s']:.3f} | "
            f"{_f(r.get('no_buckets_s'), '.3f')} | "
            f"{_f(r['naive_s'], '.2f')} | {_f(r['speedup_vs_naive'], '.1f', 'x')} | "
            f"{r['floor_s']:.3f} | {r['fast_over_floor']:.2f}x | "
            f"{r['fast_over_floor_rule_of_thumb']:.2f}x | {r['truncation_abs_diff']:.1e} | "
            f"{r['fp16_cache_abs_diff']:.1e} | {_f(r['step_loss_abs_diff'], '.1e')} |"
        )
    out += [
        "",
        "| model | method | image (s) | text fwd (s) | loss fwd (s) | backward (s) | "
        "optimizer (s) | GEMM GFLOP/s | text GFLOP fwd+bwd | fast min (s) | others' load (cores) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p = r["fast_phases_s"]
        out.append(
            f"| {r['model']} | {r['method']} | "
            + " | ".join(f"{p[k]:.4f}" for k in PHASES)
            + f" | {r['gemm_gflops']:.1f} | {r['text_gflop_fwd_bwd']:.1f} | "
            f"{r['fast_min_s']:.3f} | {r['others_load_cores_during_fast']:.2f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m bench.local_step", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "local_step.json"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed fast steps (after 1 warm-up)")
    p.add_argument("--naive-repeats", type=int, default=2, help="timed naive steps (+1 warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--naive-methods", nargs="+", default=list(NAIVE_METHODS),
                   help="methods whose naive step is also timed (it is slow)")  # fmt: skip
    p.add_argument("--models", nargs="+", default=["stand-in", "tinyclip", "vit-b16"],
                   choices=["stand-in", "tinyclip", "vit-b16"])  # fmt: skip
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="first wait up to S s for an idle CPU")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    idle_load = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else None
    run_start = cpu_snapshot()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    kw = {"batch": args.batch, "repeats": args.repeats, "naive_repeats": args.naive_repeats,
          "methods": args.methods, "naive_methods": args.naive_methods}  # fmt: skip
    for key, path in (("stand-in", STAND_IN), ("tinyclip", TINYCLIP)):
        if key not in args.models:
            continue
        if path.is_dir():
            backbone = load_backbone(ModelConfig(name=str(path), device="cpu"))
            rows += run_model(path.name, backbone, UCM.is_dir(), **kw)
            if not UCM.is_dir():
                notes.append(f"{UCM} absent: random pixels for {path.name}")
        else:
            notes.append(f"skipped {path.name}: {path} is absent")
            print(notes[-1], flush=True)
    if "vit-b16" in args.models:
        tok_dir = TINYCLIP if TINYCLIP.is_dir() else None
        if tok_dir is None:
            notes.append("no CLIP BPE tokenizer in ../shared: tiny word-level tokenizer used")
        rows += run_model("ViT-B/16 shape (random)", vitb16_backbone(tok_dir), False, **kw)
    result = {
        "command": " ".join(
            ["python -m bench.local_step", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_1_5_15": list(_loadavg()),
            "others_load_cores_before": idle_load,
            "others_load_cores_during_run": others_load(run_start, cpu_snapshot()),
        },
        "batch": args.batch,
        "repeats": {"fast": args.repeats, "naive": args.naive_repeats, "warmup": 1},
        "targets": targets(rows),
        "notes": notes,
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(rows))
    print(json.dumps({"targets": result["targets"], "wall_s": result["wall_s"]}, indent=1))
    return result


def _loadavg() -> tuple[float, ...]:
    try:
        return os.getloadavg()
    except OSError:
        return ()


if __name__ == "__main__":
    main()
