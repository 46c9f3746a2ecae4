"""A backbone loaded from a local directory reads only its text side; the vision tower follows
on first use. Nothing it computes differs from the eagerly loaded model."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from task.config import ModelConfig, PromptConfig
from task.local.features import FeatureCache
from task.model.backbone import load_backbone
from task.model.prompts import PromptLearner
from task.model.zeroshot import zeroshot_features
from testkit.images import TINY_CLASSES


@pytest.fixture(params=["tiny_clip_dir", "tiny_dual_encoder_dir", "tiny_siglip_dir"])
def model_dir(request):
    return request.getfixturevalue(request.param)


def test_text_side_only_and_identical_results(model_dir):
    cfg = ModelConfig(name=str(model_dir), device="cpu")
    lazy = load_backbone(cfg)
    eager = load_backbone(cfg, lazy_vision=False)
    assert not lazy.vision_loaded and eager.vision_loaded
    assert lazy.identity == eager.identity and lazy.family == eager.family
    assert lazy.logit_scale == eager.logit_scale
    for backbone in (lazy, eager):
        assert backbone.embed_dim == eager.embed_dim and backbone.text_width == eager.text_width
    prompts = [PromptLearner(b, TINY_CLASSES, PromptConfig(), seed=1) for b in (lazy, eager)]
    with torch.no_grad():
        a, b = (p(shared=True, personal=True) for p in prompts)
    assert torch.equal(a.shared, b.shared) and torch.equal(a.personal, b.personal)
    za, zb = (zeroshot_features(bb, TINY_CLASSES).shared for bb in (lazy, eager))
    assert torch.equal(za, zb)
    assert not lazy.vision_loaded  # text work never touched the vision tower
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = eager.preprocess(images)
    fa, fb = lazy.encode_images(pixels, True), eager.encode_images(pixels, True)
    assert lazy.vision_loaded
    torch.testing.assert_close(fa.global_, fb.global_, atol=1e-6, rtol=0)


def test_cached_features_never_load_the_vision_tower(
    tmp_path, tiny_dual_encoder_dir, synthetic_image_root
):
    from task.data.records import ImageRecord

    records = [
        ImageRecord(p.parent.name + "/" + p.name, str(p), i % len(TINY_CLASSES))
        for i, p in enumerate(sorted(synthetic_image_root.rglob("*.png")))
    ]
    cfg = ModelConfig(name=str(tiny_dual_encoder_dir), device="cpu")
    cache = FeatureCache(tmp_path / "features")
    first = cache.load_or_extract(load_backbone(cfg), records, True, progress=False)
    fresh = load_backbone(cfg)  # a new process in deployment
    again = cache.load_or_extract(fresh, records, True, progress=False)
    assert not fresh.vision_loaded
    assert torch.equal(first.global_, again.global_)


def test_a_text_only_process_imports_no_timm(tiny_dual_encoder_dir):
    """The stand-in's vision tower is a timm model: a client with cached features must not
    pay timm's import (seconds) in every fresh ClientApp process."""
    code = textwrap.dedent(
        f"""
        import sys
        from task.model.backbone import load_backbone
        from task.config import ModelConfig
        from task.model.zeroshot import zeroshot_features
        b = load_backbone(ModelConfig(name={str(tiny_dual_encoder_dir)!r}, device="cpu"))
        zeroshot_features(b, ["river", "beach"])
        assert b.preprocessing_id  # part of the feature-cache key
        assert "timm" not in sys.modules, "timm was imported"
        # nor transformers' image processing (~2 s): the cache key reads the stored config
        assert "transformers.image_processing_utils" not in sys.modules
        b.encode_images(__import__("torch").randn(1, 3, 64, 64), False)
        assert "timm" in sys.modules
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_a_clip_vision_tower_loads_where_timm_is_not_installed(tiny_clip_dir):
    """Only a timm tower needs timm: the ClientApp image built for a CLIPModel has none."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["timm"] = None  # as if not installed: `import timm` raises
        from transformers.utils import import_utils
        import_utils.is_timm_available = lambda: False
        from task.model.backbone import load_backbone
        from task.config import ModelConfig
        b = load_backbone(ModelConfig(name={str(tiny_clip_dir)!r}, device="cpu"))
        b.encode_images(__import__("torch").randn(1, 3, 32, 32), False)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
