"""Baseline methods: local, fedprox, fedotp, fedpgp, the fedrsclip ablations and fedavg-full."""

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from task.config import LossConfig, PromptConfig, TrainConfig, parse_run_config
from task.data.records import ImageRecord
from task.local.evaluate import evaluate, prompt_features
from task.local.features import FeatureSet
from task.local.train import train
from task.local.train_full import evaluate_full, train_full
from task.methods import METHODS, get_method, shared_bytes, shared_numel
from task.methods.fedavg_full import build_full_model
from task.methods.fedprox import proximal_term
from task.methods.ot import patch_prompt_ot, unbalanced_sinkhorn_plan
from task.model.prompts import PRIVATE_KEY, SHARED_KEY
from testkit.images import TINY_CLASSES

# Methods the generic loop trains (pfedmoap's own loop: tests/task/methods/test_pfedmoap.py).
PROMPT_METHODS = [n for n, m in METHODS.items() if m.trains and m.client_kind == "prompt"]
ONE_STEP = TrainConfig(epochs=1, batch_size=64, lr=0.01)


def _features(n_per_class=3, n_patches=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(TINY_CLASSES)).repeat_interleave(n_per_class)
    glob = F.normalize(torch.randn(len(labels), d, generator=g), dim=-1)
    patches = F.normalize(torch.randn(len(labels), n_patches, d, generator=g), dim=-1)
    return FeatureSet([f"i{i}" for i in range(len(labels))], labels, glob, patches.half())


def _learner(backbone, name, prompt=None, seed=0):
    return get_method(name).build_learner(backbone, TINY_CLASSES, prompt or PromptConfig(), seed)


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_every_method_trains_one_step_with_finite_loss(tiny_backbone, name):
    method = get_method(name)
    learner = _learner(tiny_backbone, name)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    cfg = LossConfig(ot_iters=20)
    res = train(learner, method, _features(), cfg, ONE_STEP, 10.0, seed=0)
    assert res.steps == 1 and math.isfinite(res.loss)
    assert all(math.isfinite(v) for v in res.parts.values())
    after = learner.state_dict()
    for key in method.shared_keys + method.private_keys:
        assert not torch.equal(before[key], after[key]), f"{name}: {key} did not train"
    expected = {
        "local": {"ce", "loss"},
        "promptfl": {"ce", "loss"},
        "fedprox": {"ce", "prox", "loss"},
        "fedotp": {"ce", "loss"},
        "fedpgp": {"ce", "pgp", "loss"},
        "fedrsclip": {"ce", "ce_global", "dpa", "ot", "loss"},
        "fedrsclip-noprivate": {"ce", "ot", "loss"},
        "fedrsclip-nodpa": {"ce", "ce_global", "ot", "loss"},
        "fedrsclip-separate": {"ce", "ce_global", "dpa", "ot", "loss"},
        "promptfolio": {"ce", "loss"},
        "fedrsclip-concat": {"ce", "ce_global", "dpa", "ot", "loss"},
        "fedrsclip-noot": {"ce", "ce_global", "dpa", "loss"},
    }[name]
    assert set(res.parts) == expected
    # evaluation of both models works (local has no global model: NaN)
    text = prompt_features(learner)
    head = method.head_for(cfg)
    pers = evaluate(text, _features(), head, cfg, 10.0, personalised=method.has_private)
    glob = evaluate(text, _features(), head, cfg, 10.0, personalised=False)
    assert 0.0 <= pers.accuracy <= 1.0
    assert math.isnan(glob.accuracy) == (not method.has_shared)


def test_shared_and_private_keys_per_method(tiny_backbone):
    expected = {
        "zeroshot": ((), ()),
        "local": ((), (PRIVATE_KEY,)),
        "promptfl": ((SHARED_KEY,), ()),
        "fedprox": ((SHARED_KEY,), ()),
        "fedotp": ((SHARED_KEY,), (PRIVATE_KEY,)),
        "fedpgp": ((SHARED_KEY,), (PRIVATE_KEY,)),
        "fedrsclip": ((SHARED_KEY,), (PRIVATE_KEY,)),
        "fedrsclip-noprivate": ((SHARED_KEY,), ()),
        "fedrsclip-nodpa": ((SHARED_KEY,), (PRIVATE_KEY,)),
        "fedrsclip-noot": ((SHARED_KEY,), (PRIVATE_KEY,)),
        "fedrsclip-separate": ((SHARED_KEY,), (PRIVATE_KEY,)),
        "promptfolio": ((SHARED_KEY,), (PRIVATE_KEY,)),
        "pfedmoap": ((SHARED_KEY,), (PRIVATE_KEY,)),  # private: [own prompt; gate], packed
        "fedrsclip-concat": ((SHARED_KEY,), (PRIVATE_KEY,)),
        "fedavg-full": ((), ()),  # model-dependent: shared_keys_for(model)
    }
    assert set(expected) == set(METHODS)
    for name, (shared, private) in expected.items():
        method = get_method(name)
        assert (method.shared_keys, method.private_keys) == (shared, private), name
        assert not set(method.shared_keys) & set(method.private_keys)
        if name in PROMPT_METHODS:
            learner = _learner(tiny_backbone, name)
            assert set(learner.state_dict()) == set(shared) | set(private), name
            assert shared_numel(method, learner) == method.params_per_round(4, 32)
            assert shared_bytes(method, learner) == 4 * method.params_per_round(4, 32)
    assert get_method("fedrsclip").params_per_round(4, 512) == 2048
    assert get_method("fedavg-full").params_per_round(4, 512) is None
    assert not get_method("fedrsclip-noot").needs_patches(LossConfig())
    assert get_method("fedotp").needs_patches(LossConfig(head="clip"))


def test_fedprox_with_zero_mu_equals_promptfl(tiny_backbone):
    states = {}
    for name, mu in (("promptfl", 0.01), ("fedprox", 0.0), ("fedprox", 1.0)):
        learner = _learner(tiny_backbone, name)
        cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05)
        train(learner, get_method(name), _features(), LossConfig(prox_mu=mu), cfg, 10.0, seed=3)
        states[(name, mu)] = learner.shared_ctx.detach().clone()
    assert torch.equal(states[("promptfl", 0.01)], states[("fedprox", 0.0)])
    assert not torch.equal(states[("promptfl", 0.01)], states[("fedprox", 1.0)])


def test_proximal_gradient_is_mu_times_distance_to_global():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    s_global = torch.randn(4, 8, generator=g, dtype=torch.float64)
    mu = 0.3
    (grad,) = torch.autograd.grad(mu * proximal_term({"s": s}, {"s": s_global}), [s])
    torch.testing.assert_close(grad, mu * (s.detach() - s_global))


def test_fedprox_global_state_is_used(tiny_backbone):
    """An explicit global_state far away pulls S towards it (versus the default anchor)."""
    method = get_method("fedprox")
    far = {SHARED_KEY: torch.zeros(4, 32)}
    out = []
    for global_state in (None, far):
        learner = _learner(tiny_backbone, "fedprox")
        cfg = LossConfig(prox_mu=5.0)
        train(learner, method, _features(), cfg, ONE_STEP, 10.0, 0, global_state=global_state)
        out.append(learner.shared_ctx.detach().norm())
    assert out[1] < out[0]


def test_fedpgp_low_rank_private_and_contrastive(tiny_backbone):
    prompt = PromptConfig(rank=2)
    learner = _learner(tiny_backbone, "fedpgp", prompt)
    method = get_method("fedpgp")
    assert method.shared_keys == (SHARED_KEY,)
    assert learner.state_dict()[PRIVATE_KEY].shape == (4 + 32, 2)
    u, v = learner.low_rank_factors()
    assert u.shape == (4, 2) and v.shape == (32, 2)
    delta = learner.personal_context() - learner.shared_ctx
    torch.testing.assert_close(delta, u @ v.t())
    assert int(torch.linalg.matrix_rank((u.double() @ v.double().t()).detach())) == 2
    feats = learner(shared=True, personal=True, anchor=True)
    assert feats.anchor is not None and not feats.anchor.requires_grad
    fs = _features()
    obj = method.objective(LossConfig(), feats, fs.global_[:5], None, fs.labels[:5], 10.0)
    obj.loss.backward()
    assert learner.shared_ctx.grad is not None and learner.private_ctx.grad is not None
    # with prompt.init = "a photo of a", the anchor is the hand-crafted prompt itself
    plain = _learner(tiny_backbone, "promptfl")
    torch.testing.assert_close(feats.anchor, prompt_features(plain).shared, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:If reg_type = entropy:UserWarning")
def test_unbalanced_plan_matches_pot_and_huge_penalty_is_balanced():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 6, 2, generator=g, dtype=torch.float64)
    reg, rho = 0.1, 0.5
    plans = unbalanced_sinkhorn_plan(cost, reg, rho, max_iter=5000, tol=1e-13)
    for k in range(2):
        # POT's "entropy" regulariser is sum T (log T - 1): the same problem with cost C + reg.
        ref = ot.unbalanced.sinkhorn_unbalanced(
            np.full(6, 1 / 6),
            np.full(2, 1 / 2),
            cost[k].numpy() + reg,
            reg,
            rho,
            reg_type="entropy",
            stopThr=1e-14,
            numItermax=100000,
        )
        np.testing.assert_allclose(plans[k].numpy(), ref, atol=1e-9)
    patches = F.normalize(torch.randn(3, 5, 8, generator=g, dtype=torch.float64), dim=-1)
    prompts = F.normalize(torch.randn(4, 2, 8, generator=g, dtype=torch.float64), dim=-1)
    balanced = patch_prompt_ot(patches, prompts, 0.1, 2000, 1e-12)
    relaxed = patch_prompt_ot(patches, prompts, 0.1, 2000, 1e-12, marginal_reg=1e6)
    torch.testing.assert_close(relaxed.plan, balanced.plan, atol=1e-6, rtol=0)
    torch.testing.assert_close(relaxed.similarity, balanced.similarity, atol=1e-6, rtol=0)
    torch.testing.assert_close(relaxed.distance, balanced.distance, atol=1e-5, rtol=0)
    loose = patch_prompt_ot(patches, prompts, 0.1, 2000, 1e-12, marginal_reg=0.05)
    assert not torch.allclose(loose.plan.sum(dim=(2, 3)), torch.ones(3, 4, dtype=torch.float64))


def test_fedotp_unbalanced_objective_approaches_balanced(tiny_backbone):
    learner = _learner(tiny_backbone, "fedotp")
    method = get_method("fedotp")
    assert learner.fusion == "separate" and method.head_for(LossConfig(head="clip")) == "ot"
    fs = _features()
    with torch.no_grad():
        feats = learner()
    args = (feats, fs.global_, fs.patches.float(), fs.labels, 10.0)
    balanced = method.objective(LossConfig(ot_iters=500, ot_tol=1e-9), *args)
    relaxed = method.objective(LossConfig(ot_iters=500, ot_tol=1e-9, ot_marginal_reg=1e5), *args)
    assert abs(balanced.parts["loss"] - relaxed.parts["loss"]) < 1e-3


def test_fedavg_full_shares_exactly_the_trainable_parameters(tiny_backbone, synthetic_image_root):
    method = get_method("fedavg-full")
    assert method.client_kind == "full" and not method.uses_cached_features
    model = build_full_model(tiny_backbone, TINY_CLASSES)
    keys = set(method.shared_keys_for(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert keys == trainable == set(model.state_dict())
    assert "head.weight" in keys and any(k.startswith("vision_model.") for k in keys)
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())  # copy, not shared
    n = sum(p.numel() for p in model.parameters())
    assert shared_numel(method, model) == n and shared_bytes(method, model) == 4 * n
    records = [
        ImageRecord(f"{c}/{p.name}", str(p), label)
        for label, c in enumerate(TINY_CLASSES)
        for p in sorted((synthetic_image_root / c).glob("*.png"))[:2]
    ]
    before = model.head.weight.detach().clone()
    res = train_full(model, tiny_backbone, records, TrainConfig(batch_size=16, lr=0.01), seed=0)
    assert res.steps == 1 and math.isfinite(res.loss) and res.num_examples == len(records)
    assert not torch.equal(before, model.head.weight)
    ev = evaluate_full(model, tiny_backbone, records)
    assert ev.num_examples == len(records) and 0.0 <= ev.accuracy <= 1.0
    with pytest.raises(ValueError, match="train_full"):
        train(model, method, _features(), LossConfig(), ONE_STEP, 10.0, 0)


def test_new_config_keys_parse_and_validate():
    cfg = parse_run_config(
        {
            "method.name": "fedpgp",
            "prompt.rank": 3,
            "loss.prox-mu": 0.1,
            "loss.ot-marginal-reg": 1.0,
            "loss.pgp-weight": 0.5,
            "loss.pgp-temp": 0.5,
        }
    )
    assert cfg.prompt.rank == 3 and cfg.loss.ot_marginal_reg == 1.0
    for bad in ({"prompt.rank": 0}, {"loss.prox-mu": -1.0}, {"loss.pgp-temp": 0.0}):
        with pytest.raises(ValueError):
            parse_run_config(bad)


# What each ablation removes from fedrsclip, as behaviour: (loss terms of a training step,
# has a private prompt, needs patches with the CLIP head at beta > 0, its personalised head when
# the config asks for entropy, its prompt fusion).
ABLATION_BEHAVIOUR = {
    "fedrsclip": ({"ce", "ce_global", "dpa", "ot"}, True, True, "entropy", "separate"),
    "fedrsclip-noprivate": ({"ce", "ot"}, False, True, None, "separate"),
    "fedrsclip-nodpa": ({"ce", "ce_global", "ot"}, True, True, "entropy", "separate"),
    "fedrsclip-noot": ({"ce", "ce_global", "dpa"}, True, False, "entropy", "separate"),
    "fedrsclip-separate": ({"ce", "ce_global", "dpa", "ot"}, True, True, "private", "separate"),
    "fedrsclip-concat": ({"ce", "ce_global", "dpa", "ot"}, True, True, "private", "concat"),
}


@pytest.mark.parametrize("name", list(ABLATION_BEHAVIOUR))
def test_each_ablation_removes_what_its_name_says(tiny_backbone, name):
    terms, private, patches_at_beta, head, fusion = ABLATION_BEHAVIOUR[name]
    method = get_method(name)
    learner = _learner(tiny_backbone, name)
    res = train(learner, method, _features(), LossConfig(ot_iters=20), ONE_STEP, 10.0, seed=0)
    assert set(res.parts) - {"loss"} == terms
    assert (learner.private_ctx is not None) is private
    assert learner.fusion == fusion
    assert method.needs_patches(LossConfig(head="clip", beta=1.0)) is patches_at_beta
    assert method.needs_patches(LossConfig(head="clip", beta=0.0)) is False
    if head is not None:
        assert method.personal_head_for(PromptConfig(personal_head="entropy")) == head
