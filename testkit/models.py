"""Tiny random dual encoders saved in Hugging Face format, so every test goes through the same
loader as a real model. Families: CLIPModel, VisionTextDualEncoderModel (timm CNN, HF ViT or
CLIP vision tower + BERT text tower) and SiglipModel."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from testkit.tiny_tokenizers import (
    make_tiny_bert_tokenizer,
    make_tiny_siglip_tokenizer,
    make_tiny_tokenizer,
)


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

    from task.model.families.optional_imports import timm_for_transformers

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
    from task.model.families.optional_imports import import_optional

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
