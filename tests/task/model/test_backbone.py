import pytest
import torch
import torch.nn.functional as F

from task.config import ConfigError, ModelConfig
from task.model.backbone import BackboneNotFoundError, load_backbone
from testkit.models import save_tiny_clip


def test_loads_local_dir_frozen_eval_cpu(tiny_backbone):
    model = tiny_backbone.model
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert tiny_backbone.device.type == "cpu"
    assert tiny_backbone.dtype == torch.float32
    assert tiny_backbone.logit_scale == pytest.approx(float(model.logit_scale.exp()))


def test_identity_depends_on_weights(tmp_path, tiny_backbone):
    other = load_backbone(ModelConfig(name=str(save_tiny_clip(tmp_path / "b", seed=1))))
    assert other.identity != tiny_backbone.identity
    same = load_backbone(ModelConfig(name=str(save_tiny_clip(tmp_path / "c", seed=0))))
    assert same.identity == tiny_backbone.identity


def test_missing_local_dir_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="does not exist"):
        load_backbone(ModelConfig(name=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneNotFoundError, match="no config.json"):
        load_backbone(ModelConfig(name=str(tmp_path / "empty")))


def test_offline_hub_id_says_how_to_pass_local_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneNotFoundError, match="local") as info:
        load_backbone(ModelConfig(name="someone/not-a-cached-clip"))
    assert "model.name=" in str(info.value)


def test_float16_needs_cuda(tiny_clip_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="float16"):
        load_backbone(ModelConfig(name=str(tiny_clip_dir), dtype="float16"))


def test_image_features_are_projected_normalised_tokens(tiny_backbone):
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32)
    feats = tiny_backbone.encode_images(pixels, with_patches=True)
    model = tiny_backbone.model
    with torch.no_grad():
        ref_global = F.normalize(
            model.get_image_features(pixel_values=pixels).pooler_output, dim=-1
        )
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state
        ref_patches = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:]))
    assert feats.global_.shape == (3, 16)
    assert feats.patches.shape == (3, 16, 16)  # (32 / 8)^2 patches, projection 16
    torch.testing.assert_close(feats.global_, ref_global, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        feats.patches, F.normalize(ref_patches, dim=-1), atol=1e-6, rtol=1e-5
    )
    assert tiny_backbone.encode_images(pixels, with_patches=False).patches is None
