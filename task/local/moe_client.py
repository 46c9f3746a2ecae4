"""The client kind of ``pfedmoap``: one prompt that starts each round from the federation's
average, trained with a private attention gate over frozen expert prompts the server chose for
this client (task.methods.pfedmoap). Its private store keeps [own prompt; gate] packed in one
tensor: the personalised model of round r is that round's own prompt and gate, with the experts
of the message that asks for the evaluation."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from task.local.client import ClientEval, PromptClient
from task.local.evaluate import evaluate, per_class, prompt_features
from task.local.features import FeatureSet
from task.local.train import EvalResult, TrainResult, batch_of, make_optimizer
from task.methods import PRIVATE_KEY, SHARED_KEY
from task.methods.pfedmoap import (
    EXPERT_KEY,
    ExpertGate,
    gate_optimizer,
    gate_width,
    moe_logits,
    pack,
    unpack,
)
from task.model.prompts import PromptLearner, load_prompts
from task.model.zeroshot import zeroshot_features
from task.seeds import derive_seed


class MoAPClient(PromptClient):
    """pFedMoAP's client: own prompt + private gate + the experts in the message."""

    def new_gate(self) -> ExpertGate:
        p = self.cfg.prompt
        width = gate_width(self.backbone.embed_dim, p.gate_dim)
        heads = p.gate_heads if width % p.gate_heads == 0 else 1
        seed = derive_seed(self.cfg.train.seed, 0, self.partition_id, "gate")
        return ExpertGate(width, heads, p.gate_scaling, seed).to(self.backbone.device)

    def prompt_learner(self, ctx: torch.Tensor) -> PromptLearner:
        seed = derive_seed(self.cfg.train.seed, 0, self.partition_id, "init")
        learner = self.method.build_learner(
            self.backbone, self.fed.class_names, self.cfg.prompt, seed=seed
        )
        return load_prompts(learner, {SHARED_KEY: ctx.float()})

    def kept(
        self, max_round: int, shape: tuple[int, int]
    ) -> tuple[torch.Tensor | None, ExpertGate | None, int | None]:
        """(own prompt, gate, round) kept at a round <= max_round; Nones before the first."""
        loaded = self.store.load(max_round)
        if loaded is None:
            return None, None, None
        state, private_round = loaded
        own, gate = unpack(state, shape, self.new_gate())
        return own, gate, private_round

    @torch.no_grad()
    def expert_features(self, received: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The experts' class features [E, C, D] (frozen), or None when none were sent."""
        experts = received.get(EXPERT_KEY)
        if experts is None or len(experts) == 0:
            return None
        if experts.ndim != 3 or tuple(experts.shape[1:]) != tuple(received[SHARED_KEY].shape):
            raise ValueError(f"{EXPERT_KEY} has shape {tuple(experts.shape)}: not [E, h, W]")
        learner = self.prompt_learner(received[SHARED_KEY])
        feats = learner.encode_contexts([e.float().to(learner.device) for e in experts])
        feats = F.normalize(feats.float(), dim=-1)
        return feats.view(len(experts), len(self.fed.class_names), -1)

    def train(
        self, shared: Mapping[str, torch.Tensor], server_round: int
    ) -> tuple[dict[str, torch.Tensor], TrainResult]:
        """Start from the federation's average prompt, keep the gate of the last round (a fresh
        one the first time experts arrive), train both; save them; send the prompt."""
        received = {k: v.float() for k, v in shared.items()}
        learner = self.prompt_learner(received[SHARED_KEY])
        shape = tuple(received[SHARED_KEY].shape)
        _, gate, _ = self.kept(server_round - 1, shape)
        experts = self.expert_features(received)
        if experts is not None and gate is None:
            gate = self.new_gate()
        result = self._train_moe(learner, gate, experts, self.train_features(), server_round)
        own = learner.state_dict()[SHARED_KEY]
        self.store.save(pack(own, gate), server_round)
        return {SHARED_KEY: own.detach().cpu().clone()}, result

    def _train_moe(
        self,
        learner: PromptLearner,
        gate: ExpertGate | None,
        experts: torch.Tensor | None,
        features: FeatureSet,
        server_round: int,
    ) -> TrainResult:
        train_cfg, scale = self.cfg.train, self.backbone.logit_scale
        if train_cfg.epochs == 0 or len(features) == 0:
            return TrainResult(0.0, 0, 0)
        params = [p for p in learner.parameters() if p.requires_grad]
        optimizers = [make_optimizer(params, train_cfg)]
        if gate is not None:
            optimizers.append(gate_optimizer(gate, self.cfg.prompt.gate_lr))
        generator = torch.Generator().manual_seed(self._seed(server_round))
        n, total, steps = len(features), 0.0, 0
        for _ in range(train_cfg.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, train_cfg.batch_size):
                image_global, _, labels = batch_of(
                    features, order[start : start + train_cfg.batch_size], learner.device
                )
                own = learner(shared=True, personal=False).shared
                logits = moe_logits(
                    image_global, own, experts, gate, scale, self.cfg.loss.moe_lambda
                )
                loss = F.cross_entropy(logits, labels)
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
                total += float(loss.detach())
                steps += 1
        mean = total / steps
        return TrainResult(mean, n * train_cfg.epochs, steps, {"ce": mean, "loss": mean})

    def evaluate(
        self, shared: Mapping[str, torch.Tensor], server_round: int, with_zeroshot: bool = False
    ) -> ClientEval:
        """Personalised: round r's own prompt and gate with the experts sent now; global: the
        federation's average prompt alone."""
        feats, scale, loss_cfg = self.features("test"), self.backbone.logit_scale, self.cfg.loss
        received = {k: v.float() for k, v in shared.items()}
        zeroshot = None
        if with_zeroshot:
            text = zeroshot_features(self.backbone, self.fed.class_names)
            zeroshot = evaluate(text, feats, "clip", loss_cfg, scale, personalised=False)
        avg = prompt_features(self.prompt_learner(received[SHARED_KEY]))
        global_ = evaluate(avg, feats, "clip", loss_cfg, scale, personalised=False)
        own, gate, private_round = self.kept(server_round, tuple(received[SHARED_KEY].shape))
        if own is None:  # nothing trained yet: the personalised model is the global one
            return ClientEval(global_, global_, None, zeroshot)
        own_feats = prompt_features(self.prompt_learner(own)).shared
        personal = self._score(feats, own_feats, self.expert_features(received), gate)
        return ClientEval(personal, global_, private_round, zeroshot)

    @torch.no_grad()
    def _score(
        self,
        feats: FeatureSet,
        own: torch.Tensor,
        experts: torch.Tensor | None,
        gate: ExpertGate | None,
        batch_size: int = 256,
    ) -> EvalResult:
        n, n_classes = len(feats), own.shape[0]
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0, [float("nan")] * n_classes)
        preds, loss_sum = [], 0.0
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            image_global, _, labels = batch_of(feats, idx, own.device)
            logits = moe_logits(
                image_global, own, experts, gate, self.backbone.logit_scale,
                self.cfg.loss.moe_lambda,
            )  # fmt: skip
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            preds.append(logits.argmax(dim=1).cpu())
        accuracy, per = per_class(torch.cat(preds), feats.labels, n_classes)
        return EvalResult(accuracy, loss_sum / n, n, per)


__all__ = ["PRIVATE_KEY", "MoAPClient"]
