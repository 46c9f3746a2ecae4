import torch
import torch.nn.functional as F

from task.config import LossConfig
from task.methods import get_method
from task.methods.fedrsclip import dual_prompt_alignment
from task.methods.heads import compute_logits, prompt_set
from task.model.prompts import PromptFeatures


def _feats(c=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    shared = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    personal = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    return PromptFeatures(shared.requires_grad_(True), personal.requires_grad_(True))


def _images(b=5, n=6, d=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(b, d, generator=g), dim=-1),
        F.normalize(torch.randn(b, n, d, generator=g), dim=-1),
        torch.randint(0, 4, (b,), generator=g),
    )


def test_dpa_pulls_personal_only_and_prefers_matching_classes():
    feats = _feats()
    loss = dual_prompt_alignment(feats.personal, feats.shared, scale=10.0)
    loss.backward()
    assert feats.shared.grad is None
    assert feats.personal.grad is not None
    aligned = dual_prompt_alignment(feats.shared.detach(), feats.shared.detach(), scale=10.0)
    assert aligned < loss


def test_objective_parts_per_method():
    feats = _feats()
    image_global, patches, labels = _images()
    cfg = LossConfig(alpha=1.0, beta=0.5)
    full = get_method("fedrsclip").objective(cfg, feats, image_global, patches, labels, 10.0)
    assert set(full.parts) == {"ce", "ce_global", "dpa", "ot", "loss"}
    expected = (
        full.parts["ce"] + full.parts["ce_global"] + full.parts["dpa"] + 0.5 * full.parts["ot"]
    )
    assert abs(full.parts["loss"] - expected) < 1e-5
    plain = get_method("promptfl").objective(
        cfg,
        PromptFeatures(feats.shared, None),
        image_global,
        None,
        labels,
        10.0,
    )
    assert set(plain.parts) == {"ce", "loss"}


def test_ot_alignment_without_ot_head_equals_true_class_distance():
    feats = _feats()
    image_global, patches, labels = _images()
    with_head = get_method("fedrsclip").objective(
        LossConfig(alpha=0, beta=1.0, head="clip+ot"),
        feats,
        image_global,
        patches,
        labels,
        10.0,
    )
    clip_head = get_method("fedrsclip").objective(
        LossConfig(alpha=0, beta=1.0, head="clip"),
        feats,
        image_global,
        patches,
        labels,
        10.0,
    )
    assert abs(with_head.parts["ot"] - clip_head.parts["ot"]) < 1e-6


def test_heads_and_global_model_use_shared_only():
    feats = _feats()
    image_global, patches, _ = _images()
    cfg = LossConfig()
    clip_global, _ = compute_logits("clip", feats, image_global, None, 2.0, cfg, personalised=False)
    torch.testing.assert_close(clip_global, 2.0 * image_global @ feats.shared.t())
    clip_pers, _ = compute_logits("clip", feats, image_global, None, 2.0, cfg, personalised=True)
    torch.testing.assert_close(clip_pers, 2.0 * image_global @ feats.personal.t())
    assert prompt_set(feats, personalised=False).shape == (4, 1, 8)
    assert prompt_set(feats, personalised=True).shape == (4, 2, 8)
    both, res = compute_logits("clip+ot", feats, image_global, patches, 2.0, cfg, True)
    torch.testing.assert_close(both, (clip_pers + 2.0 * res.similarity) / 2)


def test_each_weight_changes_the_total_by_exactly_its_term():
    """gamma, alpha, beta and the DPA scale s each enter the loss as declared: doubling a weight
    adds exactly one more of its term (a dropped or mis-wired weight fails)."""
    feats = _feats()
    image_global, patches, labels = _images()
    fedrsclip = get_method("fedrsclip")

    def total(**kw):
        cfg = LossConfig(**{"alpha": 1.0, "beta": 0.5, "gamma": 1.0, "dpa_scale": 10.0, **kw})
        return fedrsclip.objective(cfg, feats, image_global, patches, labels, 10.0).parts

    base = total()
    for weight, part in (("gamma", "ce_global"), ("alpha", "dpa"), ("beta", "ot")):
        bigger = total(**{weight: 2 * {"gamma": 1.0, "alpha": 1.0, "beta": 0.5}[weight]})
        added = {"gamma": 1.0, "alpha": 1.0, "beta": 0.5}[weight] * base[part]
        assert abs(bigger["loss"] - (base["loss"] + added)) < 1e-5, weight
        zero = total(**{weight: 0.0})
        assert part not in zero
        assert abs(zero["loss"] - (base["loss"] - added)) < 1e-5, weight
    # The DPA scale s is the InfoNCE temperature: its term is CE(s * p_c . s_j, c).
    for scale in (1.0, 10.0, 30.0):
        dpa = total(dpa_scale=scale)["dpa"]
        logits = scale * feats.personal.detach() @ feats.shared.detach().t()
        ref = F.cross_entropy(logits, torch.arange(len(logits)))
        assert abs(dpa - float(ref)) < 1e-6, scale


def test_pgp_contrastive_against_its_formula():
    """FedPGP's term per class c: CE([cos(a_c, s_c), cos(s_c, p_c)] / t, 0), written out."""
    from task.methods.fedpgp import pgp_contrastive

    g = torch.Generator().manual_seed(5)
    a, s, p = (F.normalize(torch.randn(6, 8, generator=g), dim=-1) for _ in range(3))
    for temp in (0.5, 1.0, 2.0):
        got = pgp_contrastive(a, s, p, temp)
        pos, neg = (a * s).sum(-1) / temp, (s * p).sum(-1) / temp
        ref = (-pos + torch.logsumexp(torch.stack([pos, neg], dim=1), dim=1)).mean()
        assert abs(float(got) - float(ref)) < 1e-6, temp
    # It pulls the shared prompt toward the anchor and pushes it from the personal one.
    s = s.clone().requires_grad_(True)
    pgp_contrastive(a, s, p, 1.0).backward()
    step = s - 0.1 * s.grad
    assert float(((a * step).sum(-1) - (a * s).sum(-1)).mean()) > 0
