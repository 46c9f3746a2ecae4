"""OpenCLIP -> CLIPModel conversion on a randomly initialised small OpenCLIP model.

Needs ``open_clip`` (installed in CI with --no-deps; skipped with the reason where absent).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from task.config import ModelConfig, PromptConfig
from task.model.backbone import load_backbone
from task.model.families.convert_openclip import ConversionError, convert_model, main
from task.model.families.optional_imports import import_optional
from task.model.prompts import PromptLearner

try:
    open_clip = import_optional("open_clip", "the converter test")
except ImportError as err:  # pragma: no cover - depends on the environment
    pytest.skip(f"open_clip is not installed: {err}", allow_module_level=True)


def _tiny_openclip(quick_gelu: bool = False, seed: int = 0):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
        quick_gelu=quick_gelu,
    )
    # Random, non-trivial norms and logit scale, so that a missed tensor would show.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(3.0)
    return model.eval()


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_converted_features_equal_openclip(tmp_path, quick_gelu):
    source = _tiny_openclip(quick_gelu)
    report = convert_model(source, tmp_path / "clip")
    assert report["image_max_abs_diff"] < 1e-5 and report["text_max_abs_diff"] < 1e-5
    saved = json.loads((tmp_path / "clip" / "conversion.json").read_text())
    assert saved["token_ids_equal"]

    backbone = load_backbone(ModelConfig(name=str(tmp_path / "clip"), device="cpu"))
    assert backbone.family == "clip"
    act = backbone.model.config.text_config.hidden_act
    assert act == ("quick_gelu" if quick_gelu else "gelu")
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = F.normalize(source.encode_image(pixels), dim=-1)
    ours_img = backbone.encode_images(pixels, False).global_
    torch.testing.assert_close(ours_img, ref, atol=1e-5, rtol=0)

    classes = ["harbor", "dense residential", "tennis court"]
    tokens = open_clip.tokenize([f"a photo of a {c}." for c in classes])
    with torch.no_grad():
        ref_text = F.normalize(source.encode_text(tokens), dim=-1)
        ours = PromptLearner(backbone, classes, PromptConfig(), with_private=False)()
    torch.testing.assert_close(ours.shared, ref_text, atol=1e-5, rtol=0)
    assert backbone.logit_scale == pytest.approx(float(torch.tensor(3.0).exp()), rel=1e-6)


def test_tokenizer_matches_openclip(tmp_path):
    convert_model(_tiny_openclip(), tmp_path / "clip")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "clip")
    texts = ["A Satellite photo of a baseball-diamond!", "mobile home park.", "  two   spaces"]
    ours = tok(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ref = open_clip.tokenize(texts)
    torch.testing.assert_close(ours.masked_fill(ours == 49407, 0), ref.masked_fill(ref == 49407, 0))


def test_cli_converts_a_checkpoint_file_and_refuses_resnets(tmp_path, capsys):
    source = _tiny_openclip()
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    import task.model.families.convert_openclip as conv

    original = conv.load_openclip

    def tiny_arch(arch, checkpoint):
        model = _tiny_openclip(seed=5)
        state = torch.load(checkpoint, weights_only=False)["state_dict"]
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        return model

    conv.load_openclip = tiny_arch
    try:
        argv = ["--arch", "tiny", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
        assert main(argv) == 0
        assert main(argv) == 1
        assert "not empty" in capsys.readouterr().err
    finally:
        conv.load_openclip = original
    info = json.loads((tmp_path / "o" / "conversion.json").read_text())
    assert len(info["checkpoint_sha256"]) == 64
    assert main(["--arch", "x", "--checkpoint", str(tmp_path / "nope.pt"), "--out", "y"]) == 2

    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    resnet = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    with pytest.raises(ConversionError, match="ResNet"):
        convert_model(resnet, tmp_path / "rn")
