import json

import pytest
import torch

from task.config import LossConfig, ModelConfig, PromptConfig
from task.data.records import CorruptImageError, ImageRecord
from task.local.features import FeatureCache, FeatureSet, extract_features
from task.methods import get_method
from task.model.backbone import load_backbone
from task.model.prompts import PromptLearner
from testkit.images import TINY_CLASSES
from testkit.models import save_tiny_clip


def _records(root):
    recs = []
    for label, name in enumerate(TINY_CLASSES):
        for path in sorted((root / name).iterdir()):
            recs.append(ImageRecord(f"{name}/{path.name}", str(path), label))
    return recs


def test_cache_roundtrip_and_reuse(tmp_path, tiny_backbone, synthetic_image_root):
    records = _records(synthetic_image_root)
    cache = FeatureCache(tmp_path / "cache")
    first = cache.load_or_extract(tiny_backbone, records, with_patches=True, progress=False)
    files = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob(".*tmp"))
    again = cache.load_or_extract(tiny_backbone, records, with_patches=False, progress=False)
    assert again.ids == first.ids and again.patches is None
    torch.testing.assert_close(again.global_, first.global_)
    assert first.patches.dtype == torch.float16
    assert torch.equal(first.labels, torch.tensor([r.label for r in records]))


def test_global_only_cache_is_upgraded_when_patches_needed(
    tmp_path, tiny_backbone, synthetic_image_root
):
    records = _records(synthetic_image_root)
    cache = FeatureCache(tmp_path)
    assert cache.load_or_extract(tiny_backbone, records, False, progress=False).patches is None
    assert cache.load_or_extract(tiny_backbone, records, True, progress=False).patches is not None


def test_no_stale_hits_for_other_model_preprocessing_or_files(
    tmp_path, tiny_backbone, synthetic_image_root
):
    records = _records(synthetic_image_root)
    cache = FeatureCache(tmp_path / "cache")
    key = cache.key(tiny_backbone, records)
    other_model = load_backbone(ModelConfig(name=str(save_tiny_clip(tmp_path / "m", seed=5))))
    assert cache.key(other_model, records) != key
    pre_dir = save_tiny_clip(tmp_path / "p", seed=0)  # same weights, other preprocessing
    stored = pre_dir / "preprocessor_config.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "image_mean": [0.5] * 3}))
    other_pre = load_backbone(ModelConfig(name=str(pre_dir)))
    assert list(other_pre.image_processor.image_mean) == [0.5, 0.5, 0.5]
    assert other_pre.identity == tiny_backbone.identity
    assert cache.key(other_pre, records) != key
    assert cache.key(tiny_backbone, records[:-1]) != key
    with open(records[0].path, "ab") as f:  # same id, changed file
        f.write(b"\0")
    assert cache.key(tiny_backbone, records) != key


def test_training_loss_from_cache_equals_on_the_fly(tmp_path, tiny_backbone, synthetic_image_root):
    records = _records(synthetic_image_root)[:16]
    cached = FeatureCache(tmp_path).load_or_extract(tiny_backbone, records, True, progress=False)
    cached = FeatureCache(tmp_path).load_or_extract(tiny_backbone, records, True, progress=False)
    learner = PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig())
    from task.data.records import load_rgb

    pixels = tiny_backbone.preprocess([load_rgb(r.path) for r in records])
    live = tiny_backbone.encode_images(pixels, with_patches=True)
    labels = torch.tensor([r.label for r in records])
    method, cfg = get_method("fedrsclip"), LossConfig()
    feats = learner()
    from_cache = method.objective(cfg, feats, cached.global_, cached.patches.float(), labels, 10.0)
    on_the_fly = method.objective(cfg, feats, live.global_, live.patches, labels, 10.0)
    assert from_cache.parts["loss"] == pytest.approx(on_the_fly.parts["loss"], abs=1e-3)
    assert from_cache.parts["ce"] == pytest.approx(on_the_fly.parts["ce"], abs=1e-5)


def test_corrupt_image_named_or_skipped(tmp_path, tiny_backbone, synthetic_image_root):
    records = _records(synthetic_image_root)
    bad = synthetic_image_root / "river" / "river_00.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(CorruptImageError, match="river_00.png"):
        extract_features(tiny_backbone, records, False, progress=False)
    feats = extract_features(tiny_backbone, records, False, skip_corrupt=True, progress=False)
    assert feats.skipped == 1 and len(feats) == len(records) - 1
    assert "river/river_00.png" not in feats.ids
    assert isinstance(feats, FeatureSet)


def test_a_verified_cache_file_is_not_hashed_again_until_it_changes(
    tmp_path, tiny_backbone, synthetic_image_root, monkeypatch
):
    """Issue 27: a fresh ClientApp process used to re-hash every cached tensor every message
    (~2 GB a round for 10,000 ViT-B/16 images); now once per file version. A rewritten or
    truncated file is still caught."""
    import os

    import task.local.features as features_mod
    from task.data.records import ImageRecord
    from task.local.features import CacheCorruptError, FeatureCache

    records = [
        ImageRecord(p.name, str(p), i % 2)
        for i, p in enumerate(sorted(synthetic_image_root.rglob("*.png"))[:6])
    ]
    cache = FeatureCache(tmp_path / "cache")
    first = cache.load_or_extract(tiny_backbone, records, with_patches=True, progress=False)
    hashed = []
    real = features_mod.safetensors_sha256

    def counting(path, names):
        hashed.extend(names)
        return real(path, names)

    monkeypatch.setattr(features_mod, "safetensors_sha256", counting)
    for _ in range(3):  # three more messages, e.g. three fresh processes
        again = FeatureCache(tmp_path / "cache").load_or_extract(
            tiny_backbone, records, with_patches=True, progress=False
        )
        assert torch.equal(again.global_, first.global_)
    assert len(hashed) == 2  # global + patches, verified once (the extraction wrote no memo)
    path = cache.path(cache.key(tiny_backbone, records))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one flipped bit, written back: a new mtime, so verified again, and caught
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match="fails its checksum"):
        FeatureCache(tmp_path / "cache").load_or_extract(
            tiny_backbone, records, with_patches=True, progress=False
        )
    st = path.stat()
    os.truncate(path, st.st_size // 2)
    with pytest.raises(CacheCorruptError):
        FeatureCache(tmp_path / "cache").load_or_extract(
            tiny_backbone, records, with_patches=True, progress=False
        )
