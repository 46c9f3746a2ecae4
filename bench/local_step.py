"""One local training step: this project's path vs the naive path vs the FLOP floor.

Run: ``python -m bench.local_step`` (or ``python -m bench``); writes
bench/results/local_step.json (``--out``) and prints a markdown table. docs/performance.md holds
the numbers of a run and how to read them.

* fast path: cached frozen image features (global fp32 + patches fp16, as task.local.features stores
  them), prompts cut to the longest real prompt (``learner.full_length = False``), the method's
  ``Method.objective``, backward, optimiser step;
* naive path: the image encoder on the pixel batch every step and prompts padded to the text
  tower's full length (``learner.full_length = True``: 77 tokens for CLIP, 512 for the stand-in's
  BERT), with the same method, prompts, objective and optimiser;
* fast path with length buckets (``learner.bucket_by_length = True``: one text-tower call per
  prompt length, no padding at all) against the default single batch padded to the longest
  prompt: both exact, so only the time differs;
* floor: text-encoder forward + backward FLOPs at the real prompt length over the GEMM rate
  measured on this machine, interleaved with the fast step's repeats (same threads, same load).

Models: the stand-in rs-lit-b0-minilm (VisionTextDualEncoder: EfficientNet-Lite0 + 6-layer,
384-wide BERT text tower), the older CLIPModel stand-in rs-tinyclip-aid, and a randomly
initialised CLIP with ViT-B/16's shapes.

Modules: bench.step (inputs, one step, its time, loss agreement, FLOPs) and bench.machine (GEMM
rate, CPU load, CPU name); this one builds the models, runs them and writes the table.

Losses agree: the cut and the full-length prompts give the same loss on identical fp32 image
features (``truncation_abs_diff``); the fp16 patch cache is reported separately
(``fp16_cache_abs_diff``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from bench.machine import cpu_name, cpu_snapshot, loadavg, others_load, wait_for_idle
from bench.step import (
    PHASES,
    SHARED,
    UCM,
    loss_agreement,
    make_inputs,
    method_and_loss,
    ot_solver_times,
    prompt_lengths,
    step_learner,
    text_flops,
    time_step,
)
from task.config import ModelConfig
from task.model.backbone import Backbone, load_backbone

REPO = Path(__file__).resolve().parents[1]
STAND_IN = SHARED / "models" / "rs-lit-b0-minilm"
TINYCLIP = SHARED / "models" / "rs-tinyclip-aid"
# fedrsclip: S + P, CE (+ global CE), DPA, OT head + OT loss (exact two-point OT for M = 2);
# fedrsclip:pot the same with POT's log-Sinkhorn; fedrsclip-noot: S + P and DPA, no OT at all;
# promptfl: one shared prompt, CE only.
METHODS = ("fedrsclip", "fedrsclip:pot", "fedrsclip-noot", "promptfl")
NAIVE_METHODS = ("fedrsclip", "promptfl")
TARGET_SPEEDUP = 15.0
TARGET_FLOOR_RATIO = 1.5


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
    return Backbone.from_model(
        model, tokenizer, processor, torch.device("cpu"), torch.float32, "random-vit-b16"
    )


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
        _, _, learner, _ = step_learner(spec, inputs, naive=False)
        lengths = prompt_lengths(learner)
        length = max(lengths)
        n_prompts = 2 if method.has_private else 1
        before = cpu_snapshot()
        fast = time_step(spec, inputs, False, repeats, gemm_shape=(sum(lengths), width))
        fast_others = others_load(before, cpu_snapshot())
        bucketed = time_step(spec, inputs, False, repeats, buckets=True)
        naive = time_step(spec, inputs, True, naive_repeats) if spec in naive_methods else None
        flops = text_flops(backbone, lengths)
        floor = flops["fwd_bwd_frozen"] / fast["gemm_rate"]
        row = {
            "model": name, "method": spec, "prompts_per_class": n_prompts, "classes": n_classes,
            "batch": batch, "prompt_tokens": length,
            "prompt_tokens_mean": sum(lengths) / len(lengths),
            "naive_prompt_tokens": backbone.text.max_positions,
            "fast_s": fast["seconds"], "fast_min_s": min(fast["all_seconds"]),
            "buckets_s": bucketed["seconds"],
            "buckets_all_s": bucketed["all_seconds"],
            "buckets_over_fast": bucketed["seconds"] / fast["seconds"],
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


def _f(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The main table, then the fast path's time per phase."""
    out = [
        "| model | method | prompts x classes | tokens (mean / max / naive) | fast step (s) | "
        "length buckets (s) | naive step (s) | speed-up | floor (s) | fast / floor | "
        "fast / floor (bwd=2x fwd) | \\|Δloss\\| cut vs full | \\|Δloss\\| fp16 cache | "
        "\\|Δloss\\| first step fast vs naive |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['method']} | {r['prompts_per_class']} x {r['classes']} | "
            f"{r.get('prompt_tokens_mean', r['prompt_tokens']):.1f} / {r['prompt_tokens']} / "
            f"{r['naive_prompt_tokens']} | {r['fast_s']:.3f} | "
            f"{_f(r.get('buckets_s'), '.3f')} | "
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
            "load_average_1_5_15": list(loadavg()),
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


if __name__ == "__main__":
    main()
