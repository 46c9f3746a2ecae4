"""Convert an OpenCLIP checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP, ...) to a ``CLIPModel``
directory that ``model.name`` can point at.

Remote-sensing CLIPs are published as OpenCLIP state dicts for the standard CLIP architectures
(RemoteCLIP ViT-B/32 and ViT-L/14, GeoRSCLIP ViT-B/32 and ViT-L/14, SkyCLIP ViT-B/32 and
ViT-L/14). ``open_clip`` builds the source architecture by name, the checkpoint is loaded into it
(strictly), and every tensor is mapped onto the Hugging Face ``CLIPModel`` layout (fused
attention in-projections split into q/k/v, projections transposed). The tokenizer is rebuilt
from OpenCLIP's own BPE file (the OpenAI CLIP vocabulary) and the image processor from the
model's preprocessing settings. Before anything is written, the converted model must reproduce
OpenCLIP's image and text features on a random image and a few prompts (max |diff| <= 1e-4);
the measured differences are saved in ``conversion.json``.

Only the OpenAI-style architecture converts (class-token ViT with pre/post layer norms and a
projection matrix; causal text transformer pooled at the end token). ResNet image towers (e.g.
RemoteCLIP RN50), attention-pooled or HF-text-tower OpenCLIP models are refused with the reason.

    python -m task.model.families.convert_openclip --arch ViT-B-32 \\
        --checkpoint RemoteCLIP-ViT-B-32.pt --out models/remoteclip-vit-b-32
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from task.hashing import file_sha256
from task.model.families.optional_imports import import_optional

PROBE_TEXTS = ("a satellite photo of a harbor.", "an aerial image of dense residential area.")
TOLERANCE = 1e-4
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ConversionError(ValueError):
    """The OpenCLIP model cannot be represented as a CLIPModel, or the result does not match."""


# -- architecture ----------------------------------------------------------------------------


def _check_architecture(model: nn.Module) -> None:
    visual = getattr(model, "visual", None)
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "proj")
    if visual is None or not all(hasattr(visual, n) for n in needed):
        raise ConversionError(
            f"image tower {type(visual).__name__} is not a class-token ViT (ResNet and timm "
            "towers have no CLIPModel equivalent)"
        )
    attn_pooled = getattr(visual, "attn_pool", None) is not None
    if attn_pooled or getattr(visual, "pool_type", "tok") != "tok":
        raise ConversionError("attention-pooled or non-class-token ViT pooling is not CLIP's")
    if getattr(visual, "final_ln_after_pool", False) or visual.proj is None:
        raise ConversionError("this ViT variant (no projection / layer norm after pooling)")
    if not isinstance(visual.ln_pre, nn.LayerNorm):
        raise ConversionError("ViT without a pre-layernorm (no_ln_pre) is not CLIP's")
    for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(model, name):
            raise ConversionError(
                f"text tower has no {name}: HF-text-tower OpenCLIP models (CustomTextCLIP) "
                "have no CLIPModel equivalent"
            )
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        raise ConversionError(f"text pooling {model.text_pool_type!r} is not CLIP's end token")
    if not isinstance(model.text_projection, torch.Tensor | nn.Parameter):
        raise ConversionError("a linear (biased) text projection is not CLIP's")


def _act(block: nn.Module) -> str:
    gelu = block.mlp.gelu
    name = type(gelu).__name__
    if name == "QuickGELU":
        return "quick_gelu"
    if isinstance(gelu, nn.GELU):
        return "gelu"
    raise ConversionError(f"unsupported activation {name}")


def _tower_config(blocks: nn.ModuleList, width: int) -> dict[str, Any]:
    first = blocks[0]
    return {
        "hidden_size": width,
        "intermediate_size": first.mlp.c_fc.out_features,
        "num_hidden_layers": len(blocks),
        "num_attention_heads": first.attn.num_heads,
        "hidden_act": _act(first),
        "layer_norm_eps": first.ln_1.eps,
    }


def clip_config(model: nn.Module) -> Any:
    """The ``CLIPConfig`` of the same shapes as an OpenCLIP CLIP model."""
    from transformers import CLIPConfig

    _check_architecture(model)
    visual = model.visual
    v_width = visual.class_embedding.shape[0]
    patch = visual.conv1.kernel_size[0]
    grid = int(round((visual.positional_embedding.shape[0] - 1) ** 0.5))
    t_width = model.token_embedding.weight.shape[1]
    return CLIPConfig(
        text_config={
            **_tower_config(model.transformer.resblocks, t_width),
            "vocab_size": model.token_embedding.weight.shape[0],
            "max_position_embeddings": model.positional_embedding.shape[0],
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            **_tower_config(visual.transformer.resblocks, v_width),
            "image_size": grid * patch,
            "patch_size": patch,
        },
        projection_dim=visual.proj.shape[1],
    )


# -- weights ---------------------------------------------------------------------------------


def _block(sd: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """One residual block: fused q/k/v in-projection split, CLIP's names."""
    q, k, v = sd[f"{src}.attn.in_proj_weight"].chunk(3)
    qb, kb, vb = sd[f"{src}.attn.in_proj_bias"].chunk(3)
    out = {
        f"{dst}.self_attn.q_proj.weight": q,
        f"{dst}.self_attn.k_proj.weight": k,
        f"{dst}.self_attn.v_proj.weight": v,
        f"{dst}.self_attn.q_proj.bias": qb,
        f"{dst}.self_attn.k_proj.bias": kb,
        f"{dst}.self_attn.v_proj.bias": vb,
    }
    renames = {
        "attn.out_proj": "self_attn.out_proj",
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for a, b in renames.items():
        for p in ("weight", "bias"):
            out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]
    return out


def clip_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """OpenCLIP tensors renamed (and split/transposed) to ``CLIPModel``'s."""
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "visual_projection.weight": sd["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_projection.weight": sd["text_projection"].t(),
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    for p in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{p}"] = sd[f"visual.ln_pre.{p}"]
        out[f"vision_model.post_layernorm.{p}"] = sd[f"visual.ln_post.{p}"]
        out[f"text_model.final_layer_norm.{p}"] = sd[f"ln_final.{p}"]
    for i in range(len(model.visual.transformer.resblocks)):
        out |= _block(sd, f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}")
    for i in range(len(model.transformer.resblocks)):
        out |= _block(sd, f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}")
    return {k: v.contiguous() for k, v in out.items()}


# -- tokenizer and image processor -----------------------------------------------------------


def byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-level BPE alphabet: printable bytes as themselves, the rest shifted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    shifted = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + shifted)
            shifted += 1
    return [chr(c) for c in codes]


def clip_tokenizer(bpe_path: str | os.PathLike[str]) -> Any:
    """The OpenAI CLIP tokenizer from OpenCLIP's merges file (49,408 tokens)."""
    from transformers import CLIPTokenizer

    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tok.model_max_length = 77
    return tok


def image_processor(model: nn.Module) -> Any:
    from transformers import CLIPImageProcessor

    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or OPENAI_STD)
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(mean),
        image_std=list(std),
        resample=3,  # bicubic, as OpenCLIP's eval transform
    )


# -- conversion ------------------------------------------------------------------------------


@torch.no_grad()
def feature_differences(source: nn.Module, converted: nn.Module, tokenizer: Any) -> dict:
    """Max |diff| of image and text features between OpenCLIP and the converted CLIPModel."""
    open_clip = import_optional("open_clip", "the OpenCLIP converter")
    size = converted.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref_img = source.encode_image(pixels)
    img = converted.get_image_features(pixel_values=pixels).pooler_output
    context = converted.config.text_config.max_position_embeddings
    ids_ref = open_clip.tokenize(list(PROBE_TEXTS), context_length=context)
    enc = tokenizer(list(PROBE_TEXTS), padding="max_length", max_length=ids_ref.shape[1])
    ids = torch.tensor(enc.input_ids)
    ref_txt = source.encode_text(ids_ref)
    txt = converted.get_text_features(input_ids=ids).pooler_output
    return {
        "image_max_abs_diff": float((img - ref_img).abs().max()),
        "text_max_abs_diff": float((txt - ref_txt).abs().max()),
        # OpenCLIP pads with 0, the HF tokenizer with the end token: compare with both as 0.
        "token_ids_equal": bool(torch.equal(_unpad(ids), _unpad(ids_ref))),
    }


def _unpad(ids: torch.Tensor) -> torch.Tensor:
    return ids.masked_fill(ids == 49407, 0)


def convert_model(
    source: nn.Module,
    out_dir: str | os.PathLike[str],
    info: dict | None = None,
    force: bool = False,
) -> dict:
    """Write ``source`` (an OpenCLIP CLIP model) as a CLIPModel directory; returns the report."""
    from transformers import CLIPModel

    open_clip = import_optional("open_clip", "the OpenCLIP converter")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise ConversionError(f"output directory {str(out)!r} is not empty (use --force)")
    source = source.float().eval()
    config = clip_config(source)
    converted = CLIPModel(config).eval()
    missing, unexpected = converted.load_state_dict(clip_state_dict(source), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConversionError(f"tensor mapping incomplete: missing {missing}, extra {unexpected}")
    from open_clip.tokenizer import default_bpe

    tokenizer = clip_tokenizer(default_bpe())
    report = feature_differences(source, converted, tokenizer)
    worst = max(report["image_max_abs_diff"], report["text_max_abs_diff"])
    if worst > TOLERANCE or not report["token_ids_equal"]:
        raise ConversionError(f"converted model does not reproduce OpenCLIP: {report}")
    report |= {"open_clip_version": open_clip.__version__, **(info or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        converted.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        image_processor(source).save_pretrained(tmp)
        (tmp / "conversion.json").write_text(json.dumps(report, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def load_openclip(arch: str, checkpoint: str | os.PathLike[str] | None) -> nn.Module:
    """Build ``arch`` with OpenCLIP and load the checkpoint strictly (any nesting/prefix)."""
    open_clip = import_optional("open_clip", "the OpenCLIP converter")
    model = open_clip.create_model(arch, pretrained=None)
    if checkpoint is not None:
        # weights_only: a third-party checkpoint is data, never code (a pickle with a payload
        # is refused instead of executed).
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if isinstance(state, nn.Module):
            state = state.state_dict()
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model.load_state_dict(state, strict=True)
    return model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, help="OpenCLIP architecture, e.g. ViT-B-32")
    parser.add_argument("--checkpoint", required=True, help="OpenCLIP state dict (.pt/.bin)")
    parser.add_argument("--out", required=True, help="directory to write the CLIPModel to")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        print(f"error: checkpoint {str(ckpt)!r} does not exist", file=sys.stderr)
        return 2
    try:
        model = load_openclip(args.arch, ckpt)
        info = {"arch": args.arch, "checkpoint": ckpt.name, "checkpoint_sha256": file_sha256(ckpt)}
        report = convert_model(model, args.out, info, force=args.force)
    except (ConversionError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    print(f"wrote {args.out}: use it with --run-config \"model.name='{args.out}'\"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
