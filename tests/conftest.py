"""Shared fixtures: tiny random dual encoders saved in HF format, and synthetic images.

Unit tests never touch ../shared: the makers live in testkit/ (shared with bench/): tiny models
with real tokenizers of each family's kind (a CLIP BPE, a BERT WordPiece, a SigLIP-style
tokenizer with only an end token, each with a small vocabulary), random towers, saved with
save_pretrained so every test goes through the same loader as a real model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.models import save_tiny_clip, save_tiny_dual_encoder, save_tiny_siglip

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def tiny_dual_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dual_encoder(tmp_path_factory.mktemp("tiny-dual-encoder"))


@pytest.fixture(scope="session")
def tiny_dual_encoder(tiny_dual_encoder_dir: Path):
    from task.config import ModelConfig
    from task.model.backbone import load_backbone

    return load_backbone(ModelConfig(name=str(tiny_dual_encoder_dir), device="cpu"))


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def tiny_siglip(tiny_siglip_dir: Path):
    from task.config import ModelConfig
    from task.model.backbone import load_backbone

    return load_backbone(ModelConfig(name=str(tiny_siglip_dir), device="cpu"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_backbone(tiny_clip_dir: Path):
    from task.config import ModelConfig
    from task.model.backbone import load_backbone

    return load_backbone(ModelConfig(name=str(tiny_clip_dir), device="cpu"))


@pytest.fixture
def synthetic_image_root(tmp_path: Path) -> Path:
    return write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=6)
