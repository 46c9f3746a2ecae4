"""Shared fixtures: tiny random dual encoders saved in HF format, and synthetic images.

Unit tests never touch ../shared: the tiny models have real tokenizers of each family's kind (a
CLIP BPE, a BERT WordPiece, a SigLIP-style tokenizer with only an end token, each with a small
vocabulary built here), random towers, and are saved with save_pretrained so every test goes
through the same loader as a real model. Families: CLIPModel, VisionTextDualEncoderModel (timm
CNN, HF ViT or CLIP vision tower + BERT text tower) and SiglipModel.
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


# Words of the tiny WordPiece vocabularies: class names, prompt phrases, zero-shot templates.
_WORDS = [
    *("a", "an", "of", "the", "photo", "satellite", "aerial", "image", "remote", "sensing"),
    *("top", "down", "view", "river", "beach", "forest", "farm", "port", "baseball"),
    *("diamond", "mobile", "home", "park", "harbor"),
]


def _wordpiece_vocab(specials: list[str]) -> list[str]:
    """Specials, whole words, punctuation, and single characters (so any text tokenizes)."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    return specials + _WORDS + list(".,-'") + chars + ["##" + c for c in chars]


def make_tiny_bert_tokenizer() -> object:
    from transformers import BertTokenizer

    vocab = _wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})


def make_tiny_siglip_tokenizer() -> object:
    """No start token, an end token appended, padding with <pad> (SigLIP's conventions)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _wordpiece_vocab(["<pad>", "</s>", "<unk>"])
    ids = {t: i for i, t in enumerate(vocab)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", ids["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _tiny_bert_config(vocab_size: int, width: int = 32) -> object:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
    )


def _tiny_vision_config(kind: str, image_size: int) -> object:
    from transformers import CLIPVisionConfig, TimmWrapperConfig, ViTConfig

    if kind == "timm":
        config = TimmWrapperConfig(architecture="test_efficientnet", num_classes=0, do_pooling=True)
        config.hidden_size = 256  # the architecture's num_features (VTDE reads it)
        return config
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    if kind == "vit":
        return ViTConfig(**small, num_attention_heads=2, image_size=image_size, patch_size=8)
    if kind == "clip":
        return CLIPVisionConfig(**small, num_attention_heads=2, image_size=image_size, patch_size=8)
    raise ValueError(kind)


def save_tiny_dual_encoder(
    path: Path, vision: str = "timm", seed: int = 0, image_size: int = 64
) -> Path:
    """A random VisionTextDualEncoderModel (``vision``: timm CNN, vit or clip) + BERT text.

    64 px: the timm CNN's final feature map is then 2 x 2 (four patch tokens)."""
    from transformers import (
        CLIPImageProcessor,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    from task.backbones.optional_imports import timm_for_transformers

    tok = make_tiny_bert_tokenizer()
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        _tiny_vision_config(vision, image_size), _tiny_bert_config(len(tok)), projection_dim=16
    )
    torch.manual_seed(seed)
    with timm_for_transformers():
        model = VisionTextDualEncoderModel(config)
    if vision == "timm":
        _reinit_timm_tower(model.vision_model.timm_model, seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(path)
    return path


def _reinit_timm_tower(timm_model: torch.nn.Module, seed: int) -> None:
    """timm's own initialisation (transformers' generic one leaves this CNN's output ~1e-14) and
    non-trivial BatchNorm statistics, so that eval-mode BatchNorm is visible in the features."""
    from task.backbones.optional_imports import import_optional

    timm = import_optional("timm", "the tiny test tower")
    torch.manual_seed(seed)
    timm_model.load_state_dict(timm.create_model("test_efficientnet", num_classes=0).state_dict())
    generator = torch.Generator().manual_seed(seed)
    for module in timm_model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(1 + 0.5 * torch.rand(n, generator=generator))


def save_tiny_siglip(path: Path, seed: int = 0, image_size: int = 64) -> Path:
    """A random SiglipModel with a SigLIP-style tokenizer (end token only, 64 positions)."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    tok = make_tiny_siglip_tokenizer()
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    config = SiglipConfig(
        text_config={
            **small,
            "num_attention_heads": 2,
            "vocab_size": len(tok),
            "max_position_embeddings": 64,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": None,
        },
        vision_config={
            **small,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
    )
    torch.manual_seed(seed)
    model = SiglipModel(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dual_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dual_encoder(tmp_path_factory.mktemp("tiny-dual-encoder"))


@pytest.fixture(scope="session")
def tiny_dual_encoder(tiny_dual_encoder_dir: Path):
    from task.backbone import load_backbone
    from task.config import ModelConfig

    return load_backbone(ModelConfig(name=str(tiny_dual_encoder_dir), device="cpu"))


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def tiny_siglip(tiny_siglip_dir: Path):
    from task.backbone import load_backbone
    from task.config import ModelConfig

    return load_backbone(ModelConfig(name=str(tiny_siglip_dir), device="cpu"))


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
