import pytest
import torch
import torch.nn.functional as F

from task.config import ConfigError, PromptConfig
from task.model.prompts import PRIVATE_KEY, SHARED_KEY, PromptLearner
from testkit.images import TINY_CLASSES


def _reference(backbone, sentences):
    tok = backbone.tokenizer(sentences, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = backbone.model.get_text_features(input_ids=tok.input_ids)
    return F.normalize(out.pooler_output, dim=-1)


def test_parity_with_get_text_features(tiny_backbone):
    classes = TINY_CLASSES + ["baseball diamond"]
    learner = PromptLearner(tiny_backbone, classes, PromptConfig(), with_private=False)
    with torch.no_grad():
        feats = learner(shared=True, personal=True)
    assert feats.personal is None
    expected = _reference(tiny_backbone, [f"a photo of a {c}." for c in classes])
    torch.testing.assert_close(feats.shared, expected, atol=1e-5, rtol=0)


def test_truncation_to_longest_prompt_is_exact(tiny_backbone):
    torch.manual_seed(0)
    classes = ["a", "baseball diamond", "mobile home park", "river"]
    for fusion in ("separate", "concat"):
        cfg = PromptConfig(fusion=fusion, private_init="random", init="")
        learner = PromptLearner(tiny_backbone, classes, cfg, seed=3)
        short = learner(shared=True, personal=True)
        grads_short = torch.autograd.grad(
            (short.shared.sum() + short.personal.square().sum()), list(learner.parameters())
        )
        learner.full_length = True
        full = learner(shared=True, personal=True)
        grads_full = torch.autograd.grad(
            (full.shared.sum() + full.personal.square().sum()), list(learner.parameters())
        )
        torch.testing.assert_close(short.shared, full.shared, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(short.personal, full.personal, atol=1e-6, rtol=1e-5)
        for a, b in zip(grads_short, grads_full, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_state_dict_holds_only_context(tiny_backbone):
    learner = PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig())
    assert set(learner.state_dict()) == {SHARED_KEY, PRIVATE_KEY}
    assert learner.state_dict()[SHARED_KEY].shape == (4, 32)
    assert [n for n, _ in learner.named_parameters()] == [SHARED_KEY, PRIVATE_KEY]
    only_shared = PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig(), with_private=False)
    assert set(only_shared.state_dict()) == {SHARED_KEY}


def test_fusion_modes(tiny_backbone):
    sep = PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig(fusion="separate"))
    with torch.no_grad():
        f = sep()
    # private initialised from the same phrase: identical prompts, identical features
    torch.testing.assert_close(f.shared, f.personal)
    cat = PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig(fusion="concat"))
    assert cat.personal_context().shape == (8, 32)
    with torch.no_grad():
        g = cat()
    assert g.personal.shape == g.shared.shape == (len(TINY_CLASSES), 16)
    assert not torch.allclose(g.shared, g.personal)


def test_random_init_is_seeded(tiny_backbone):
    cfg = PromptConfig(init="")
    a = PromptLearner(tiny_backbone, TINY_CLASSES, cfg, seed=1).state_dict()
    b = PromptLearner(tiny_backbone, TINY_CLASSES, cfg, seed=1).state_dict()
    c = PromptLearner(tiny_backbone, TINY_CLASSES, cfg, seed=2).state_dict()
    torch.testing.assert_close(a[SHARED_KEY], b[SHARED_KEY])
    assert not torch.equal(a[SHARED_KEY], c[SHARED_KEY])
    assert float(a[SHARED_KEY].std()) == pytest.approx(0.02, rel=0.5)


def test_bad_prompt_settings(tiny_backbone):
    with pytest.raises(ConfigError, match="n-ctx"):
        PromptLearner(tiny_backbone, TINY_CLASSES, PromptConfig(n_ctx=2))
    with pytest.raises(ValueError, match="class_names is empty"):
        PromptLearner(tiny_backbone, [], PromptConfig())
    with pytest.raises(ConfigError, match="77"):
        PromptLearner(tiny_backbone, ["x" * 73], PromptConfig())


@pytest.mark.parametrize("backbone_name", ["tiny_backbone", "tiny_dual_encoder"])
def test_length_buckets_cut_and_full_length_agree(request, backbone_name):
    """Three encodings of the same prompts: one tower call per prompt length (default), one
    call cut to the longest prompt, and every prompt padded to the tower's full length. Same
    features and gradients (CLIP: causal; BERT: masked padding)."""
    backbone = request.getfixturevalue(backbone_name)
    classes = ["a", "baseball diamond", "mobile home park", "river", "beach"]
    cfg = PromptConfig(fusion="concat", private_init="random", init="")
    learner = PromptLearner(backbone, classes, cfg, seed=4)
    assert len(learner._buckets) > 1  # the classes really have different lengths
    results = []
    for bucket, full in ((True, False), (False, False), (False, True)):
        learner.bucket_by_length, learner.full_length = bucket, full
        feats = learner(shared=True, personal=True)
        loss = (feats.shared * torch.arange(1, 6).unsqueeze(1)).sum() + feats.personal.pow(3).sum()
        results.append((feats, torch.autograd.grad(loss, list(learner.parameters()))))
    (ref, ref_grads), *others = results
    for feats, grads in others:
        torch.testing.assert_close(feats.shared, ref.shared, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(feats.personal, ref.personal, atol=1e-6, rtol=1e-5)
        for a, b in zip(grads, ref_grads, strict=True):  # float32 sums in another order
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
