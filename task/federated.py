"""Federated orchestration without Flower: what a client does per round and what the server checks.

client_app/ and server_app/ are thin adapters over this module: they turn Flower messages into
tensors and back. Everything here is plain PyTorch, so the whole round logic is testable without a
SuperLink, and every per-round random choice derives from (seed, round, partition) so a resumed
run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from task.app_config import (  # noqa: F401  (re-exported: callers import them from here)
    APP_SECTIONS,
    CACHE_LOCATION_KEYS,
    DP_MODES,
    GLOBAL_EVAL_MODES,
    ON_CORRUPT_MODES,
    AppConfig,
    ClientSection,
    RunSection,
    ServerConfig,
    default_run_name,
    legacy_run_name,
    parse_app_config,
)
from task.backbone import Backbone, load_backbone
from task.config import ConfigError, ModelConfig, RunConfig
from task.data.config import DataConfig
from task.data.federation import Federation, build_federation, build_local_federation
from task.features import FeatureCache, FeatureSet
from task.full_finetune import (
    evaluate_full,
    initial_state,
    load_full_model,
    shared_state,
    train_full,
)
from task.methods import Method, build_learner, get_method
from task.private_store import PrivateStore
from task.prompt_learner import PRIVATE_KEY, PromptLearner
from task.train import EvalResult, TrainResult, evaluate, prompt_features, train
from task.zeroshot import zeroshot_features

log = logging.getLogger(__name__)


# -- per-process caches (a simulation actor serves many clients and rounds) -----------------
_BACKBONES: dict[tuple[str, str, str], Backbone] = {}
_FEDERATIONS: dict[str, Federation] = {}


def get_backbone(cfg: ModelConfig) -> Backbone:
    key = (cfg.name, cfg.device, cfg.dtype)
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(cfg)
    return _BACKBONES[key]


def get_federation(cfg: DataConfig) -> Federation:
    if cfg.partitioner == "local":
        raise ConfigError(
            "data.partitioner=local has no federation-wide listing (each node reads its own "
            "node config data-root); this code path needs the data. Fix: use another "
            "data.partitioner with data.root, or run this on a node"
        )
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    if key not in _FEDERATIONS:
        _FEDERATIONS[key] = build_federation(cfg)
    return _FEDERATIONS[key]


def get_local_federation(cfg: DataConfig, root: str, partition_id: int) -> Federation:
    """One node's own client (data.partitioner=local), cached like get_federation."""
    key = json.dumps([dataclasses.asdict(cfg), root, partition_id], sort_keys=True)
    if key not in _FEDERATIONS:
        _FEDERATIONS[key] = build_local_federation(cfg, root, partition_id)
    return _FEDERATIONS[key]


def run_class_names(cfg: DataConfig) -> list[str]:
    """The label space: data.class-names when given (no data read: local mode), else listed."""
    return cfg.class_name_list() or get_federation(cfg).class_names


def derive_seed(seed: int, server_round: int, partition_id: int, purpose: str = "train") -> int:
    """A 31-bit seed that depends only on its inputs (not on process, order or history)."""
    text = f"{seed}/{server_round}/{partition_id}/{purpose}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def make_learner(cfg: RunConfig, method: Method, backbone: Backbone, classes: list[str], seed: int):
    """The learner with exactly the prompts (and shapes) the method uses."""
    return build_learner(method, backbone, classes, cfg.prompt, seed=seed)


# -- server side ----------------------------------------------------------------------------
def initial_shared(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The round-0 shared prompt, built from the backbone (phrase token embeddings); for
    ``fedavg-full`` the whole round-0 model (image encoder + zero-shot-initialised head)."""
    method = get_method(cfg.method.name)
    if method.full_finetune:
        return initial_state(get_backbone(cfg.model), run_class_names(cfg.data))
    if not method.shared_keys:
        return {}
    backbone = get_backbone(cfg.model)
    classes = run_class_names(cfg.data)
    learner = PromptLearner(
        backbone, classes, cfg.prompt, with_shared=True, with_private=False, seed=cfg.train.seed
    )
    state = learner.state_dict()
    return {k: state[k].detach().cpu().float().clone() for k in method.shared_keys}


def check_shared(
    arrays: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    dtype: torch.dtype,
) -> str | None:
    """Why a client's shared tensors must not be averaged in, or None if they are fine."""
    private = [k for k in arrays if k == PRIVATE_KEY or "private" in k]
    if private:
        return f"carries private tensor(s) {sorted(private)}: rejected, never aggregated"
    if set(arrays) != set(expected):
        return f"keys {sorted(arrays)} != expected {sorted(expected)}"
    for key, shape in expected.items():
        t = arrays[key]
        if tuple(t.shape) != tuple(shape):
            return f"{key}: shape {tuple(t.shape)} != {tuple(shape)}"
        if t.dtype != dtype:
            return f"{key}: dtype {t.dtype} != {dtype}"
        if not bool(torch.isfinite(t).all()):
            return f"{key}: non-finite values"
    return None


def weighted_average(
    states: Sequence[tuple[Mapping[str, torch.Tensor], int | float]],
) -> dict[str, torch.Tensor]:
    """FedAvg: sum_i n_i * x_i / sum_i n_i, accumulated in float64, returned as float32."""
    if not states:
        raise ValueError("nothing to average")
    total = float(sum(n for _, n in states))
    if not total > 0:
        raise ValueError("example counts sum to zero")
    out: dict[str, torch.Tensor] = {}
    for key in states[0][0]:
        acc = torch.zeros_like(states[0][0][key], dtype=torch.float64)
        for state, n in states:
            acc += state[key].to(torch.float64) * (float(n) / total)
        out[key] = acc.to(torch.float32)
    return out


def weighted_mean(values: Sequence[tuple[float, int | float]]) -> float:
    """Mean of finite values weighted by counts; NaN when nothing is left."""
    kept = [(v, n) for v, n in values if v is not None and math.isfinite(v) and n > 0]
    total = sum(n for _, n in kept)
    return sum(v * n for v, n in kept) / total if total else float("nan")


def global_evaluate(
    cfg: RunConfig, shared: Mapping[str, torch.Tensor], on_corrupt: str = "error"
) -> EvalResult:
    """Shared-only accuracy on the global test set (union of the clients' test splits)."""
    method = get_method(cfg.method.name)
    backbone = get_backbone(cfg.model)
    fed = get_federation(cfg.data)
    if method.full_finetune:  # the encoder is not frozen: scored on images, no feature cache
        model = load_full_model(backbone, fed.class_names, shared)
        return evaluate_full(
            model, backbone, fed.global_test(), cfg.train.batch_size, cfg.data.skip_corrupt
        )
    feats = FeatureCache(cfg.cache.dir, on_corrupt=on_corrupt).load_or_extract(
        backbone,
        fed.global_test(),
        method.needs_patches(cfg.loss),
        skip_corrupt=cfg.data.skip_corrupt,
        progress=False,
        desc="global test features",
    )
    if not method.trains:
        text = zeroshot_features(backbone, fed.class_names)
    else:
        learner = PromptLearner(
            backbone, fed.class_names, cfg.prompt, with_shared=True, with_private=False
        )
        learner.load_state_dict({k: v.float() for k, v in shared.items()}, strict=False)
        text = prompt_features(learner)
    head = method.head_for(cfg.loss)
    return evaluate(text, feats, head, cfg.loss, backbone.logit_scale, personalised=False)


# -- client side ----------------------------------------------------------------------------
@dataclass
class ClientEval:
    """A client's evaluation on its own test split."""

    personalised: EvalResult
    global_: EvalResult
    private_round: int | None
    zeroshot: EvalResult | None = None  # the frozen model's template ensemble, when asked


class FederatedClient:
    """One partition's work in one round: load prompts, train or evaluate, persist privately."""

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
        if cfg.data.partitioner == "local":
            if not data_root:
                raise ConfigError(
                    "data.partitioner=local but this node has no data-root. Fix: start the "
                    'SuperNode with --node-config "partition-id=N data-root=/path/to/images" '
                    "(its own <root>/<class>/<image> folder)"
                )
            self.fed = get_local_federation(cfg.data, data_root, partition_id)
        else:
            self.fed = get_federation(cfg.data)
        self.data = self.fed.client(partition_id)
        self.backbone = get_backbone(cfg.model)
        self.cache = FeatureCache(cfg.cache.dir, on_corrupt=on_corrupt)
        self.feature_seconds = 0.0  # time in features(): cache load or extraction

    def features(self, split: str) -> FeatureSet:
        """This client's cached image features (extracted on first use); the time it took is
        added to ``feature_seconds`` so replies can split a round's cost (bench.simulation)."""
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
        """Learner with the server's shared prompt and the newest private version <= round."""
        seed = derive_seed(self.cfg.train.seed, 0, self.partition_id, "init")
        learner = make_learner(self.cfg, self.method, self.backbone, self.fed.class_names, seed)
        state = {k: v.to(torch.float32) for k, v in shared.items()}
        private_round = None
        if self.method.private_keys:
            loaded = self.store.load(max_private_round)
            if loaded is not None:
                state[PRIVATE_KEY], private_round = loaded
        missing = [k for k in self.method.shared_keys if k not in state]
        if missing:
            raise ValueError(f"the server sent no {missing}")
        learner.load_state_dict(state, strict=False)
        return learner, private_round

    def train(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, torch.Tensor], TrainResult]:
        """Local epochs from round r-1's private prompt; saves round r's; returns shared only."""
        if self.method.full_finetune:
            return self._train_full(shared, server_round)
        learner, _ = self.learner(shared, server_round - 1)
        result = train(
            learner,
            self.method,
            self.features("train"),
            self.cfg.loss,
            self.cfg.train,
            self.backbone.logit_scale,
            seed=derive_seed(self.cfg.train.seed, server_round, self.partition_id),
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
        reference a run's gain is measured against; prompt methods only)."""
        if self.method.full_finetune:
            return self._evaluate_full(shared)
        feats = self.features("test")
        scale = self.backbone.logit_scale
        zeroshot = None
        if with_zeroshot or not self.method.trains:
            text = zeroshot_features(self.backbone, self.fed.class_names)
            zeroshot = evaluate(text, feats, "clip", self.cfg.loss, scale, personalised=False)
        if not self.method.trains:
            return ClientEval(zeroshot, zeroshot, None, zeroshot)
        learner, private_round = self.learner(shared, server_round)
        text = prompt_features(learner)
        head = self.method.head_for(self.cfg.loss)
        personal = evaluate(
            text, feats, head, self.cfg.loss, scale, personalised=self.method.has_private
        )
        global_ = evaluate(text, feats, head, self.cfg.loss, scale, personalised=False)
        return ClientEval(personal, global_, private_round, zeroshot)

    # fedavg-full: the whole image encoder + head, trained on images (no cache, nothing private)
    def _train_full(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, torch.Tensor], TrainResult]:
        model = load_full_model(self.backbone, self.fed.class_names, shared)
        result = train_full(
            model,
            self.backbone,
            self.data.train,
            self.cfg.train,
            seed=derive_seed(self.cfg.train.seed, server_round, self.partition_id),
            skip_corrupt=self.cfg.data.skip_corrupt,
        )
        return shared_state(model, self.method.shared_keys_for(model)), result

    def _evaluate_full(self, shared: Mapping[str, torch.Tensor]) -> ClientEval:
        """The received global model on this client's test split; there is no private part, so
        the personalised result is the global one."""
        model = load_full_model(self.backbone, self.fed.class_names, shared)
        res = evaluate_full(
            model,
            self.backbone,
            self.data.test,
            self.cfg.train.batch_size,
            skip_corrupt=self.cfg.data.skip_corrupt,
        )
        return ClientEval(res, res, None)


def private_store_for(base_dir: str | Path, experiment: str, partition_id: int) -> PrivateStore:
    """The store of one client in one experiment (thin alias kept for the adapters)."""
    return PrivateStore(base_dir, experiment, partition_id)
