"""Shared fixtures: a tiny random CLIP saved in HF format, and synthetic images.

Unit tests never touch ../shared: the tiny CLIP has a real CLIP BPE tokenizer (a small vocabulary
built here), a random text and vision tower, and is saved with save_pretrained so every test goes
through the same loader as a real model.
"""

from __future__ import annotations

import os

# Before transformers / huggingface_hub are imported: they read these once at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY_CLASSES = ["river", "beach", "forest", "farm", "port"]


def _byte_chars() -> list[str]:
    """The byte-to-unicode table of GPT-2/CLIP BPE (so any text tokenizes)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def make_tiny_tokenizer() -> CLIPTokenizer:
    chars = _byte_chars()
    vocab_list = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges = [("t", "h"), ("o", "f</w>"), ("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>")]
    merges += [("r", "i"), ("ri", "v"), ("riv", "e"), ("rive", "r</w>")]
    vocab_list += [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def save_tiny_clip(
    path: Path, seed: int = 0, image_size: int = 32, text_width: int = 32, text_layers: int = 2
) -> Path:
    """A random CLIP with CLIP's structure at toy width, saved like a hub model.

    ``text_width`` sets the prompt-vector width (512 for ViT-B/16's, in bench.message_bytes).
    """
    tok = make_tiny_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": text_width,
            "intermediate_size": 2 * text_width,
            "num_hidden_layers": text_layers,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_backbone(tiny_clip_dir: Path):
    from task.backbone import load_backbone
    from task.config import ModelConfig

    return load_backbone(ModelConfig(name=str(tiny_clip_dir), device="cpu"))


def write_synthetic_images(
    root: Path, classes: list[str], per_class: int, size: int = 40, seed: int = 0
) -> Path:
    """<root>/<class>/<class>_NN.png with class-dependent colour so classes are separable."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        base = np.array([(c * 53) % 256, (c * 97) % 256, (c * 151) % 256], dtype=np.float32)
        for i in range(per_class):
            noise = rng.normal(0, 20, size=(size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.png")
    return root


@pytest.fixture
def synthetic_image_root(tmp_path: Path) -> Path:
    return write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=6)
