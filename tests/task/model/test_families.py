"""Every supported family behaves like the model's own API (tiny random models, no ../shared).

For each family the prompt learner initialised from "a photo of a" must reproduce
``get_text_features("a photo of a {class}.")`` and the image tower must reproduce
``get_image_features``; patch tokens follow the definition in task/model/families/base.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from task.config import ModelConfig, PromptConfig
from task.model.backbone import load_backbone
from task.model.families import UnsupportedModelError
from task.model.prompts import PromptLearner
from task.model.zeroshot import zeroshot_features
from testkit.images import TINY_CLASSES
from testkit.models import save_tiny_dual_encoder

CLASSES = [*TINY_CLASSES, "baseball diamond", "mobile home park"]


@pytest.fixture(scope="module", params=["timm", "vit", "clip"])
def dual_encoder(request, tmp_path_factory):
    path = save_tiny_dual_encoder(tmp_path_factory.mktemp(request.param), vision=request.param)
    return load_backbone(ModelConfig(name=str(path), device="cpu"))


def _reference_text(backbone, sentences):
    """The family's own get_text_features, with its tokenizer's padding conventions."""
    tok = backbone.tokenizer
    with torch.no_grad():
        if backbone.family == "siglip":
            ids = tok(sentences, padding="max_length", max_length=64, return_tensors="pt")
            out = backbone.model.get_text_features(input_ids=ids.input_ids)
        else:
            enc = tok(sentences, padding=True, return_tensors="pt")
            out = backbone.model.get_text_features(**enc)
    return F.normalize(out.pooler_output, dim=-1)


def _text_parity(backbone):
    learner = PromptLearner(backbone, CLASSES, PromptConfig(), with_private=False)
    with torch.no_grad():
        feats = learner(shared=True, personal=False)
    expected = _reference_text(backbone, [f"a photo of a {c}." for c in CLASSES])
    torch.testing.assert_close(feats.shared, expected, atol=1e-5, rtol=0)


def _image_parity(backbone, size=64):
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, size, size)
    feats = backbone.encode_images(pixels, with_patches=True)
    with torch.no_grad():
        ref = backbone.model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(feats.global_, F.normalize(ref, dim=-1), atol=1e-5, rtol=0)
    assert float(ref.norm(dim=-1).min()) > 1e-3  # a real feature, not a degenerate zero
    assert feats.patches.shape[0] == 3 and feats.patches.shape[2] == backbone.embed_dim
    torch.testing.assert_close(feats.patches.norm(dim=-1), torch.ones(feats.patches.shape[:2]))
    return pixels, feats


# -- VisionTextDualEncoderModel -------------------------------------------------------------


def test_dual_encoder_family_and_widths(dual_encoder):
    assert dual_encoder.family == "dual-encoder"
    assert type(dual_encoder.text).__name__ == "BertTextTower"
    assert dual_encoder.text_width == 32  # BERT hidden size: the prompt width
    assert dual_encoder.embed_dim == 16
    learner = PromptLearner(dual_encoder, CLASSES, PromptConfig())
    assert learner.state_dict()["shared_ctx"].shape == (4, 32)


def test_dual_encoder_text_parity(dual_encoder):
    _text_parity(dual_encoder)


def test_dual_encoder_image_parity(dual_encoder):
    _image_parity(dual_encoder)


def test_bert_cut_is_exact_only_with_the_mask(tiny_dual_encoder):
    """Cutting padding is exact with the attention mask (features and gradients); feeding the
    padding unmasked changes the feature, so the mask is what makes the cut exact."""
    classes = ["a", "baseball diamond", "mobile home park", "river"]
    for fusion in ("separate", "concat"):
        cfg = PromptConfig(fusion=fusion, private_init="random", init="")
        learner = PromptLearner(tiny_dual_encoder, classes, cfg, seed=3)
        short = learner(shared=True, personal=True)
        grads_short = torch.autograd.grad(
            short.shared.sum() + short.personal.square().sum(), list(learner.parameters())
        )
        learner.full_length = True
        full = learner(shared=True, personal=True)
        grads_full = torch.autograd.grad(
            full.shared.sum() + full.personal.square().sum(), list(learner.parameters())
        )
        assert learner.encoder.max_positions == 64
        torch.testing.assert_close(short.shared, full.shared, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(short.personal, full.personal, atol=1e-6, rtol=1e-5)
        for a, b in zip(grads_short, grads_full, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    tower = tiny_dual_encoder.text
    ids = tiny_dual_encoder.tokenizer(["a river."], padding="max_length", max_length=16)
    embeds = tower.token_embedding(torch.tensor(ids.input_ids))
    real = torch.tensor([sum(ids.attention_mask[0])])
    with torch.no_grad():
        masked = tower(embeds, real)
        unmasked = tower(embeds, torch.tensor([16]))
        cut = tower(embeds[:, : int(real)], real)
    torch.testing.assert_close(masked, cut, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(masked, unmasked, atol=1e-4)


def test_timm_patches_are_projected_feature_map_cells(tiny_dual_encoder):
    """CNN patch tokens = the final feature map's cells through visual_projection; with average
    pooling the unnormalised global feature is exactly their mean."""
    vision = tiny_dual_encoder.vision
    torch.manual_seed(1)
    pixels = vision.prepare(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        global_, patches = vision.project(pixels, with_patches=True)
        fmap = vision.vision_model(pixel_values=pixels).last_hidden_state  # [B, C, H, W]
    b, c, h, w = fmap.shape
    assert (h, w) == (2, 2) and patches.shape == (2, h * w, 16)
    cells = fmap.permute(0, 2, 3, 1).reshape(b, h * w, c)
    torch.testing.assert_close(patches, vision.visual_projection(cells), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(global_, patches.mean(dim=1), atol=1e-5, rtol=1e-5)


def test_channels_last_changes_no_result(tiny_dual_encoder):
    vision = tiny_dual_encoder.vision
    assert vision.channels_last
    torch.manual_seed(2)
    pixels = torch.randn(4, 3, 64, 64)
    fast = vision.encode(pixels, with_patches=True)
    vision.channels_last = False
    try:
        vision.vision_model.to(memory_format=torch.contiguous_format)
        plain = vision.encode(pixels, with_patches=True)
    finally:
        vision.channels_last = True
        vision.vision_model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.global_, plain.global_, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.patches, plain.patches, atol=1e-5, rtol=1e-5)


def test_vit_patches_go_through_the_pooler(tmp_path):
    backbone = load_backbone(
        ModelConfig(name=str(save_tiny_dual_encoder(tmp_path / "v", vision="vit")), device="cpu")
    )
    pixels, feats = _image_parity(backbone)
    vm = backbone.model.vision_model
    with torch.no_grad():
        tokens = vm(pixel_values=pixels).last_hidden_state[:, 1:]
        ref = backbone.model.visual_projection(vm.pooler.activation(vm.pooler.dense(tokens)))
    assert feats.patches.shape == (3, 64, 16)  # (64 / 8)^2 patches
    torch.testing.assert_close(feats.patches, F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)


def test_batchnorm_stays_in_eval_mode(tiny_dual_encoder):
    bns = [
        m
        for m in tiny_dual_encoder.model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    assert bns and all(not m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    tiny_dual_encoder.encode_images(torch.randn(2, 3, 64, 64), with_patches=False)
    for m, b in zip(bns, before, strict=True):
        assert torch.equal(m.running_mean, b)


# -- SiglipModel ----------------------------------------------------------------------------


def test_siglip_family(tiny_siglip):
    assert tiny_siglip.family == "siglip"
    assert not tiny_siglip.text.exact_cut
    assert tiny_siglip.text.max_positions == 64
    learner = PromptLearner(tiny_siglip, CLASSES, PromptConfig())
    assert learner.prefix_embeds.shape[1] == 0  # SigLIP's tokenizer adds no start token


def test_siglip_text_parity(tiny_siglip):
    _text_parity(tiny_siglip)


def test_siglip_image_parity_and_patch_head(tiny_siglip):
    pixels, feats = _image_parity(tiny_siglip)
    vm = tiny_siglip.model.vision_model
    with torch.no_grad():
        tokens = vm(pixel_values=pixels).last_hidden_state  # [B, P, W]
        head = vm.head
        # The attention-pooling head over one key: weight 1 on it -> out_proj(v_proj(token)).
        w_v = head.attention.in_proj_weight.chunk(3)[2]
        b_v = head.attention.in_proj_bias.chunk(3)[2]
        attended = head.attention.out_proj(tokens @ w_v.t() + b_v)
        ref = attended + head.mlp(head.layernorm(attended))
    assert feats.patches.shape == (3, 64, 32)
    torch.testing.assert_close(feats.patches, F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)


def test_siglip_zeroshot_uses_full_length_padding(tiny_siglip):
    feats = zeroshot_features(tiny_siglip, ["river"], templates=("a photo of a {}.",))
    expected = _reference_text(tiny_siglip, ["a photo of a river."])
    torch.testing.assert_close(feats.shared, expected, atol=1e-5, rtol=0)


# -- family selection -----------------------------------------------------------------------


def test_unsupported_model_class_is_a_clear_error(tmp_path):
    from transformers import BertConfig, BertModel

    from testkit.tiny_tokenizers import make_tiny_bert_tokenizer

    tok = make_tiny_bert_tokenizer()
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            intermediate_size=8,
        )
    ).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises((UnsupportedModelError, OSError), match="BertModel|supported|processor"):
        load_backbone(ModelConfig(name=str(tmp_path), device="cpu"))


def test_preflight_accepts_exactly_the_loadable_families():
    """The launcher's torch-free preflight lists config model types; the loader model classes.
    They must name the same families."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    from task.model.families import FAMILIES
    from task.runs.preflight import SUPPORTED_MODEL_TYPES

    assert {MODEL_MAPPING_NAMES[t] for t in SUPPORTED_MODEL_TYPES} == set(FAMILIES)


# -- an independent reference for learned contexts ----------------------------------------------
def _hf_context_features(backbone, classes, ctx):
    """Features of ``<prefix> ctx <class>.`` from the Hugging Face text model itself: the
    tokenizer's own ids with placeholder tokens where the context goes, padded by the family's
    convention with the attention mask, and a hook on the model's token embedding that puts
    ``ctx`` (with its gradient) at those positions. Nothing of task.model.prompts is used."""
    tok = backbone.tokenizer
    n = ctx.shape[0]
    placeholder = tok("a", add_special_tokens=False).input_ids[0]
    rows, starts = [], []
    for name in classes:
        full = tok(f"{name}.").input_ids
        content = tok(f"{name}.", add_special_tokens=False).input_ids
        start = next(i for i in range(len(full)) if full[i : i + len(content)] == content)
        rows.append(full[:start] + [placeholder] * n + full[start:])
        starts.append(start)
    assert len(set(starts)) == 1
    start = starts[0]
    pad = backbone.text.pad_id
    width = 64 if backbone.family == "siglip" else max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    embedding = next(
        m
        for name, m in backbone.model.text_model.named_modules()
        if isinstance(m, torch.nn.Embedding)
        and name.endswith(("token_embedding", "word_embeddings"))
    )

    def put_ctx(module, inputs, out):
        out = out.clone()
        out[:, start : start + n] = ctx.to(out.dtype)
        return out

    handle = embedding.register_forward_hook(put_ctx)
    try:
        kwargs = {} if backbone.family == "siglip" else {"attention_mask": mask}
        out = backbone.model.get_text_features(input_ids=ids, **kwargs)
    finally:
        handle.remove()
    return F.normalize(out.pooler_output, dim=-1)


@pytest.mark.parametrize("fixture", ["tiny_backbone", "tiny_dual_encoder", "tiny_siglip"])
def test_random_contexts_and_their_gradients_match_the_hf_model(request, fixture):
    """Issue 29: features and gradients of random (not phrase) contexts, through our cut and
    padded path, equal the Hugging Face model fed the same context as token embeddings."""
    backbone = request.getfixturevalue(fixture)
    classes = CLASSES
    cfg = PromptConfig(init="", private_init="random", init_std=0.5)
    learner = PromptLearner(backbone, classes, cfg, with_private=False, seed=11)
    weights = torch.randn(
        len(classes), backbone.embed_dim, generator=torch.Generator().manual_seed(1)
    )
    ours = learner(shared=True, personal=False).shared
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), [learner.shared_ctx])
    ctx = learner.shared_ctx.detach().clone().requires_grad_(True)
    ref = _hf_context_features(backbone, classes, ctx)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), [ctx])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-5, rtol=1e-4)
