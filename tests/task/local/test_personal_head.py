"""The personalised head over both prompts (prompt.personal-head): the feature mix, the θ a client
chooses on its held-out selection split, where θ is kept, and that predict/export score exactly
as the run's evaluation did."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from task.config import LossConfig, PromptConfig, parse_app_config
from task.local.client import SELECTION_SEED
from task.local.evaluate import choose_mix, evaluate, prompt_features
from task.local.features import FeatureSet, selection_split
from task.local.kinds import make_client
from task.local.private_store import PrivateStore, PrivateStoreError
from task.local.train import TrainConfig, train
from task.methods import get_method
from task.methods.heads import head_text, mix_features
from task.model.prompts import PromptFeatures
from task.predict.classifier import classifier_from_prompts, freeze
from task.runs.run_model import load_run_model
from testkit.images import TINY_CLASSES
from tests.reliability.helpers import client_dir, experiment, rows, run, setup_run


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _features(labels: list[int], d: int = 8, seed: int = 1) -> FeatureSet:
    return FeatureSet(
        ids=[f"img{i}" for i in range(len(labels))],
        labels=torch.tensor(labels),
        global_=_unit(len(labels), d, seed=seed),
        patches=None,
    )


def test_mix_is_exact_at_the_ends_and_normalised_between():
    s, p = _unit(5, 8, seed=1), _unit(5, 8, seed=2)
    assert torch.equal(mix_features(s, p, 0.0), s)
    assert torch.equal(mix_features(s, p, 1.0), p)
    mid = mix_features(s, p, 0.25)
    torch.testing.assert_close(mid, F.normalize(0.75 * s + 0.25 * p, dim=-1))
    torch.testing.assert_close(mid.norm(dim=-1), torch.ones(5))
    feats = PromptFeatures(s, p, mix=0.25)
    assert torch.equal(head_text(feats, personalised=True), mid)
    assert torch.equal(head_text(feats, personalised=False), s)  # the global model: S only
    feats.mix = None
    assert torch.equal(head_text(feats, personalised=True), p)
    # θ = 0 is the global model exactly, OT head included: the prompt set is S alone.
    from task.methods.heads import prompt_set

    assert prompt_set(PromptFeatures(s, p, mix=0.0), personalised=True).shape == (5, 1, 8)
    assert prompt_set(PromptFeatures(s, p, mix=0.3), personalised=True).shape == (5, 2, 8)


def test_choose_mix_follows_the_prompt_that_fits_the_held_out_images():
    labels = [0, 1, 2, 3] * 3
    sel = _features(labels)
    # Class features equal to the class means of the selection images: a perfect classifier.
    good = F.normalize(
        torch.stack([sel.global_[sel.labels == c].mean(0) for c in range(4)]), dim=-1
    )
    bad = _unit(4, 8, seed=9)
    loss = LossConfig(head="clip")
    by_shared = choose_mix(PromptFeatures(good, bad), sel, "clip", loss, 10.0, 11, fallback=0.5)
    by_private = choose_mix(PromptFeatures(bad, good), sel, "clip", loss, 10.0, 11, fallback=0.5)
    assert by_shared.theta == 0.0 and by_private.theta == 1.0
    assert [round(t, 2) for t, _, _ in by_shared.scores] == [i / 10 for i in range(11)]
    best = min(s[1] for s in by_private.scores)
    assert by_private.scores[-1][1] == best
    empty = sel.subset([])
    assert choose_mix(PromptFeatures(good, bad), empty, "clip", loss, 10.0, 11, 0.3).theta == 0.3


def test_selection_split_is_stratified_disjoint_and_fixed():
    feats = _features([c for c in range(5) for _ in range(6)])
    train_a, held_a = selection_split(feats, 0.2, (0, 3, SELECTION_SEED))
    train_b, held_b = selection_split(feats, 0.2, (0, 3, SELECTION_SEED))
    assert held_a.ids == held_b.ids and train_a.ids == train_b.ids
    assert not set(train_a.ids) & set(held_a.ids)
    assert sorted(train_a.ids + held_a.ids) == sorted(feats.ids)
    assert len(held_a) == 6 and sorted(held_a.labels.tolist()) == [0, 0, 1, 2, 3, 4]
    other = selection_split(feats, 0.2, (0, 4, SELECTION_SEED))[1]
    assert other.ids != held_a.ids  # another client draws its own
    lone = _features([0])
    assert len(selection_split(lone, 0.2, (0, 0, SELECTION_SEED))[1]) == 0


def test_entropy_mix_follows_the_clients_label_skew():
    from types import SimpleNamespace

    from task.data.records import ImageRecord
    from task.local.client import PromptClient

    def theta(labels: list[int], n_classes: int = 4, low: float = 0.1, high: float = 0.3):
        data = SimpleNamespace(
            train=[ImageRecord(f"{i}", f"{i}.png", y) for i, y in enumerate(labels)]
        )
        fed = SimpleNamespace(class_names=[str(c) for c in range(n_classes)])
        cfg = SimpleNamespace(prompt=PromptConfig(skew_low=low, skew_high=high))
        return PromptClient.label_mix(SimpleNamespace(data=data, fed=fed, cfg=cfg))

    assert theta([0, 1, 2, 3] * 5) == 0.0  # every class evenly: skew 0, the shared prompt
    assert theta([2] * 9) == 1.0  # one class: skew 1, the private prompt
    # Two of four classes evenly: skew 1 - log 2 / log 4 = 0.5, above the ramp: private.
    assert theta([0, 0, 1, 1]) == 1.0
    # On the ramp: linear between low and high (skew 0.5 against a ramp of 0.4 .. 0.6).
    assert theta([0, 0, 1, 1], low=0.4, high=0.6) == pytest.approx(0.5)
    mildly = [0, 1, 2, 3] * 5 + [0] * 3  # a little skew: below the ramp
    assert theta(mildly) == 0.0 and theta(mildly, low=0.0, high=0.1) > 0.0


def test_mix_theta_is_kept_checksummed_and_pruned(tmp_path: Path):
    store = PrivateStore(tmp_path, "exp", 0)
    for r in (1, 2, 3):
        store.save(torch.zeros(2, 3), r)
        store.save_mix(r, 0.1 * r, [(0.0, 1.0, 0.5)])
    assert store.load_mix(3) == pytest.approx(0.3) and store.load_mix(7) is None
    store.save(torch.zeros(2, 3), 4)  # keeps private r3, r4: θ of r1, r2 go
    assert sorted(p.name for p in store.dir.glob("mix-*")) == ["mix-r00003.json"]
    record = json.loads(store.mix_path(3).read_text())
    record["theta"] = 0.9
    store.mix_path(3).write_text(json.dumps(record))
    with pytest.raises(PrivateStoreError, match="checksum"):
        store.load_mix(3)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        store.save_mix(4, 1.5)


def test_training_with_a_mix_scores_the_mixed_head(tiny_backbone):
    """prompt.personal-head=mix trains the personalised CLIP head on the mixed features;
    θ = 1 is exactly the private head."""
    method = get_method("fedrsclip")
    feats = _features([0, 1, 2, 3, 4] * 2, d=16)
    losses = {}
    for head, theta in (("private", 0.4), ("mix", 1.0), ("mix", 0.5)):
        # private-init random: S and P differ from the start
        prompt = PromptConfig(private_init="random", personal_head=head, mix_theta=theta)
        assert method.train_mix(prompt) == (None if head == "private" else theta)
        learner = method.build_learner(tiny_backbone, TINY_CLASSES, prompt, seed=0)
        one = TrainConfig(epochs=1, batch_size=10, lr=0.01)
        res = train(learner, method, feats, LossConfig(head="clip", beta=0), one, 10.0, 0)
        losses[head, theta] = res.parts["ce"]
    assert losses["mix", 1.0] == losses["private", 0.4]
    assert losses["mix", 0.5] != losses["private", 0.4]
    auto = PromptConfig(personal_head="auto")
    assert method.train_mix(auto) is None  # auto trains each prompt as itself
    assert get_method("promptfolio").train_mix(auto) == auto.mix_theta  # its head is fixed
    assert get_method("fedrsclip-separate").personal_head_for(auto) == "private"


@pytest.mark.slow
@pytest.mark.parametrize("head", ["auto", "entropy"])
def test_auto_head_run_export_scores_as_the_evaluation(
    tmp_path: Path, tiny_clip_dir: Path, head: str
):
    """A run with prompt.personal-head=auto: each client trains without its selection split,
    keeps the θ it chose beside its private prompt, and the personalised classifier rebuilt
    from the run (predict/export) gives the client's reported accuracy exactly."""
    cfg = setup_run(
        tmp_path,
        tiny_clip_dir,
        num_clients=2,
        **{"prompt.personal-head": head, "loss.head": "clip", "server.num-rounds": 2},
    )
    run(cfg)
    final = rows(cfg)[-1]
    core = parse_app_config(cfg).core
    for pid in (0, 1):
        names = sorted(p.name for p in client_dir(cfg, pid).glob("mix-*"))
        assert names == ["mix-r00001.json", "mix-r00002.json"]
        model = load_run_model(Path(cfg["run.dir"]) / cfg["run.name"], client=pid)
        assert 0.0 <= model.mix <= 1.0 and model.info["mix_theta"] == model.mix
        store = PrivateStore(cfg["client.private-dir"], experiment(cfg), pid)
        client = make_client(core, pid, store)
        if head == "auto":
            held = client.selection_split(client.features("train"))[1]
            assert len(held) > 0 and not set(held.ids) & set(client.train_features().ids)
        else:
            assert model.mix == client.label_mix()
        scorer = classifier_from_prompts(
            client.backbone, model.class_names, core, model.shared_ctx, model.private_ctx, model.mix
        )
        test = client.features("test")
        res = evaluate(scorer.feats, test, "clip", core.loss, client.backbone.logit_scale, True)
        reported = final["per_client"][str(pid)]["personalised_accuracy"]
        assert math.isclose(res.accuracy, reported, abs_tol=1e-12)
        # The same class features as the client's own evaluation (θ chosen again: the same),
        # and the export's frozen features score identically.
        learner, _ = client.learner({"shared_ctx": model.shared_ctx}, 2)
        mine = client.personalise(prompt_features(learner), 2)
        assert mine.mix == model.mix
        ours = head_text(scorer.feats, personalised=True)
        torch.testing.assert_close(ours, head_text(mine, personalised=True), rtol=0, atol=0)
        exported = freeze(scorer, client.backbone, "tiny")
        logits = exported.logits(test.global_, None)
        torch.testing.assert_close(logits, scorer.logits(test.global_, None), rtol=0, atol=1e-5)
