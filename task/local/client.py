"""One partition's work in one round, free of Flower: load the prompts, train or evaluate,
keep the private part on local disk.

client_app/ is a thin adapter over this module. The method says which kind of client runs it
(``method.client_kind``, looked up in ``task.local.kinds.CLIENT_KINDS`` by ``make_client``):

* :class:`PromptClient` (``prompt``): learns context vectors over cached frozen image features
  (every method but one);
* :class:`FullFinetuneClient` (``full``): ``fedavg-full``, trains the image encoder and a
  linear head on raw images (no feature cache, nothing private).

Each kind also scores a global state on a list of records (:meth:`score_global`, the server's
``server.global-eval=server``). Every per-round random choice derives from (seed, round,
partition), so a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from task.config import RunConfig
from task.data.records import ImageRecord
from task.data.source import data_source
from task.local.evaluate import choose_mix, evaluate, label_skew_mix, prompt_features
from task.local.features import FeatureCache, FeatureSet, selection_split
from task.local.private_store import PrivateStore
from task.local.train import EvalResult, TrainResult, train
from task.local.train_full import evaluate_full, train_full
from task.methods import PRIVATE_KEY, Method, get_method
from task.methods.fedavg_full import load_full_model, shared_state
from task.model.backbone import Backbone, get_backbone
from task.model.prompts import PromptFeatures, PromptLearner, load_prompts
from task.model.zeroshot import zeroshot_features
from task.seeds import derive_seed


@dataclass
class ClientEval:
    """A client's evaluation on its own test split."""

    personalised: EvalResult
    global_: EvalResult
    private_round: int | None
    zeroshot: EvalResult | None = None  # the frozen model's template ensemble, when asked


# Third component of the selection split's seed (data.seed, partition, this): fixed per client.
SELECTION_SEED = 2


class FederatedClient:
    """What every client has: its data, the frozen backbone, its private store."""

    def __init__(
        self,
        cfg: RunConfig,
        partition_id: int,
        store: PrivateStore,
        progress: bool = False,
        on_corrupt: str = "error",
        data_root: str = "",
    ) -> None:
        self.cfg = cfg
        self.partition_id = partition_id
        self.store = store
        self.progress = progress
        self.method = get_method(cfg.method.name)
        self.fed, self.data = data_source(cfg.data, data_root).client(partition_id)
        t0 = time.perf_counter()
        self.backbone = get_backbone(cfg.model)
        self.backbone_seconds = time.perf_counter() - t0  # ~0 when this process had it already
        self.cache = FeatureCache(cfg.cache.dir, on_corrupt=on_corrupt)
        self.feature_seconds = 0.0  # time in features(): cache load or extraction

    def train(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, torch.Tensor], TrainResult]:
        raise NotImplementedError

    def evaluate(
        self, shared: Mapping[str, torch.Tensor], server_round: int, with_zeroshot: bool = False
    ) -> ClientEval:
        raise NotImplementedError

    def _seed(self, server_round: int) -> int:
        return derive_seed(self.cfg.train.seed, server_round, self.partition_id)


class PromptClient(FederatedClient):
    """Shared and private context vectors over cached frozen image features."""

    # (key, learner, private round) an evaluation built and left untouched (see learner()).
    _unused: tuple[tuple[int, int], PromptLearner, int | None] | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._features: dict[str, FeatureSet] = {}  # split -> features, read once per message
        self.head_kind = self.method.personal_head_for(self.cfg.prompt)

    def train_features(self) -> FeatureSet:
        """What local training sees: the training split, less the selection split of an
        ``auto`` personalised head (never trained on, so θ is chosen on unseen images)."""
        feats = self.features("train")
        return self.selection_split(feats)[0] if self.head_kind == "auto" else feats

    def label_mix(self) -> float:
        """θ of the ``entropy`` head, from this client's training labels only. Its label skew
        ``u = 1 - H(p)/log C`` is 0 for a client holding every class evenly and 1 for a
        one-class client; θ ramps linearly from 0 (the shared prompt) at ``prompt.skew-low``
        to 1 (its private prompt) at ``prompt.skew-high``."""
        p = self.cfg.prompt
        labels = [r.label for r in self.data.train]
        return label_skew_mix(labels, len(self.fed.class_names), p.skew_low, p.skew_high)

    def selection_split(self, feats: FeatureSet) -> tuple[FeatureSet, FeatureSet]:
        seed = (self.cfg.data.seed, self.partition_id, SELECTION_SEED)
        return selection_split(feats, self.cfg.prompt.mix_holdout, seed)

    def personalise(self, text: PromptFeatures, server_round: int) -> PromptFeatures:
        """The personalised head's features for round ``server_round``'s model: the private
        prompt's, a fixed mix, or (``auto``) the mix this client chooses on its selection
        split, saved beside its private prompt for predict and export."""
        prompt = self.cfg.prompt
        text = dataclasses.replace(text, mix_renorm=self.method.mix_renorm)
        if self.head_kind == "mix":
            return dataclasses.replace(text, mix=prompt.mix_theta)
        if self.head_kind == "entropy":
            theta = self.label_mix()
            self.store.save_mix(server_round, theta)
            return dataclasses.replace(text, mix=theta)
        if self.head_kind != "auto":
            return text
        selection = self.selection_split(self.features("train"))[1]
        head = self.method.head_for(self.cfg.loss)
        choice = choose_mix(
            text,
            selection,
            head,
            self.cfg.loss,
            self.backbone.logit_scale,
            prompt.mix_grid,
            fallback=prompt.mix_theta,
        )
        self.store.save_mix(server_round, choice.theta, choice.scores)
        return dataclasses.replace(text, mix=choice.theta)

    def features(self, split: str) -> FeatureSet:
        """This client's cached image features (extracted on first use); the time it took is
        added to ``feature_seconds`` so replies can split a round's cost (bench.simulation)."""
        if split not in self._features:
            self._features[split] = self._load_features(split)
        return self._features[split]

    def _load_features(self, split: str) -> FeatureSet:
        records = self.data.train if split == "train" else self.data.test
        t0 = time.perf_counter()
        feats = self.cache.load_or_extract(
            self.backbone,
            records,
            self.method.needs_patches(self.cfg.loss),
            skip_corrupt=self.cfg.data.skip_corrupt,
            progress=self.progress,
            desc=f"client {self.partition_id} {split} features",
        )
        self.feature_seconds += time.perf_counter() - t0
        return feats

    def learner(
        self, shared: Mapping[str, torch.Tensor], max_private_round: int
    ) -> tuple[PromptLearner, int | None]:
        """Learner with the server's shared prompt and the newest private version <= round.

        A fused message evaluates round r's model and then trains round r + 1 from the same
        shared prompt and the same private version: the learner the evaluation built (and did
        not change) is handed to training once, instead of building it and reading and checking
        the private prompt a second time."""
        key = (id(shared), max_private_round)
        if self._unused is not None and self._unused[0] == key:
            _, learner, private_round = self._unused
            self._unused = None
            return learner, private_round
        seed = derive_seed(self.cfg.train.seed, 0, self.partition_id, "init")
        learner = self.method.build_learner(
            self.backbone, self.fed.class_names, self.cfg.prompt, seed=seed
        )
        state = {k: v.to(torch.float32) for k, v in shared.items()}
        private_round = None
        if self.method.private_keys:
            loaded = self.store.load(max_private_round)
            if loaded is not None:
                state[PRIVATE_KEY], private_round = loaded
        missing = [k for k in self.method.shared_keys if k not in state]
        if missing:
            raise ValueError(f"the server sent no {missing}")
        load_prompts(learner, state, strict=False)  # a first round has no private prompt yet
        return learner, private_round

    def train(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, torch.Tensor], TrainResult]:
        """Local epochs from round r-1's private prompt; saves round r's; returns shared only."""
        learner, _ = self.learner(shared, server_round - 1)
        result = train(
            learner,
            self.method,
            self.train_features(),
            self.cfg.loss,
            self.cfg.train,
            self.backbone.logit_scale,
            seed=self._seed(server_round),
            mix=self.label_mix() if self.head_kind == "entropy" else None,
        )
        state = learner.state_dict()
        if self.method.private_keys:
            self.store.save(state[PRIVATE_KEY], server_round)
        return {k: state[k].detach().cpu().clone() for k in self.method.shared_keys}, result

    def evaluate(
        self, shared: Mapping[str, torch.Tensor], server_round: int, with_zeroshot: bool = False
    ) -> ClientEval:
        """Personalised (shared + private) and shared-only accuracy on this client's test split;
        ``with_zeroshot``: also the frozen model's zero-shot accuracy on the same images (the
        reference a run's gain is measured against)."""
        feats = self.features("test")
        scale = self.backbone.logit_scale
        zeroshot = None
        if with_zeroshot or not self.method.trains:
            text = zeroshot_features(self.backbone, self.fed.class_names)
            zeroshot = evaluate(text, feats, "clip", self.cfg.loss, scale, personalised=False)
        if not self.method.trains:
            return ClientEval(zeroshot, zeroshot, None, zeroshot)
        learner, private_round = self.learner(shared, server_round)
        self._unused = ((id(shared), server_round), learner, private_round)
        text = prompt_features(learner)
        head = self.method.head_for(self.cfg.loss)
        if self.method.has_private:
            text = self.personalise(text, server_round)
        personal = evaluate(
            text, feats, head, self.cfg.loss, scale, personalised=self.method.has_private
        )
        global_ = evaluate(text, feats, head, self.cfg.loss, scale, personalised=False)
        return ClientEval(personal, global_, private_round, zeroshot)

    @staticmethod
    def score_global(
        cfg: RunConfig,
        method: Method,
        backbone: Backbone,
        class_names: Sequence[str],
        records: Sequence[ImageRecord],
        shared: Mapping[str, torch.Tensor],
        on_corrupt: str = "error",
    ) -> EvalResult:
        """Shared-only accuracy of a global prompt on ``records`` (through the feature cache)."""
        feats = FeatureCache(cfg.cache.dir, on_corrupt=on_corrupt).load_or_extract(
            backbone,
            records,
            method.needs_patches(cfg.loss),
            skip_corrupt=cfg.data.skip_corrupt,
            progress=False,
            desc="global test features",
        )
        if not method.trains:
            text = zeroshot_features(backbone, list(class_names))
        elif not method.has_shared:  # `local`: there is no global model to score
            n = len(class_names)
            return EvalResult(float("nan"), float("nan"), 0, [float("nan")] * n)
        else:
            learner = method.build_learner(backbone, class_names, cfg.prompt, personal=False)
            load_prompts(learner, {k: v.float() for k, v in shared.items()})
            text = prompt_features(learner)
        head = method.head_for(cfg.loss)
        return evaluate(text, feats, head, cfg.loss, backbone.logit_scale, personalised=False)


class FullFinetuneClient(FederatedClient):
    """``fedavg-full``: the whole image encoder + head, trained on images (no cache, nothing
    private); the personalised result is the global one."""

    def train(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, torch.Tensor], TrainResult]:
        model = load_full_model(self.backbone, self.fed.class_names, shared)
        result = train_full(
            model,
            self.backbone,
            self.data.train,
            self.cfg.train,
            seed=self._seed(server_round),
            skip_corrupt=self.cfg.data.skip_corrupt,
        )
        return shared_state(model, self.method.shared_keys_for(model)), result

    def evaluate(
        self, shared: Mapping[str, torch.Tensor], server_round: int, with_zeroshot: bool = False
    ) -> ClientEval:
        res = self.score_global(
            self.cfg,
            self.method,
            self.backbone,
            self.fed.class_names,
            self.data.test,
            shared,
        )
        return ClientEval(res, res, None)

    @staticmethod
    def score_global(
        cfg: RunConfig,
        method: Method,
        backbone: Backbone,
        class_names: Sequence[str],
        records: Sequence[ImageRecord],
        shared: Mapping[str, torch.Tensor],
        on_corrupt: str = "error",
    ) -> EvalResult:
        """Accuracy of a global encoder + head on ``records``, scored on images (the encoder is
        not frozen: no feature cache)."""
        model = load_full_model(backbone, list(class_names), shared)
        return evaluate_full(
            model, backbone, records, cfg.train.batch_size, skip_corrupt=cfg.data.skip_corrupt
        )
