"""Learnable text context: a shared prompt S (sent to the server) and a private prompt P (never).

Each class prompt is ``<prefix> ctx_1 .. ctx_h  <class name tokens> . <closing tokens>``: the
context vectors sit between the tokenizer's leading special tokens (CLIP's start token, BERT's
[CLS], none for SigLIP) and the frozen class-name tokens (CoOp). The text tower of the backbone's
family (task/model/families) turns the sequence into a feature. With ``fusion='separate'`` the
model has two prompts per class (S-only and P-only, as FedOTP); with ``fusion='concat'`` the
personal prompt is ``[BOS] S P <class>`` and the S-only prompt stays the global model.

Only ``shared_ctx`` and ``private_ctx`` are parameters, so ``state_dict()`` holds exactly the
tensors a method may share or keep; all token embeddings are non-persistent buffers.

Low-rank personal part (FedPGP-style, ``private_rank=r > 0``): the personal context is
``S + U V^T`` with ``U`` [h, r] and ``V`` [W, r]. Both factors are private and are stored packed in
the single private tensor ``private_ctx = [U; V]`` of shape [h + W, r], so the client's private
store keeps one tensor per client for every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from task.config import ConfigError, PromptConfig
from task.model.backbone import Backbone
from task.model.families import TextTower, tokenize_class_prompts

__all__ = ["PRIVATE_KEY", "SHARED_KEY", "PromptFeatures", "PromptLearner", "load_prompts"]
# The learner's two parameters: the only state-dict keys a method may share or keep.
SHARED_KEY = "shared_ctx"
PRIVATE_KEY = "private_ctx"
ANCHOR_PHRASE = "a photo of a"  # hand-crafted prompt of FedPGP's contrastive anchor


@dataclass
class PromptFeatures:
    """L2-normalised class text features of the global (shared) and personal prompts."""

    shared: torch.Tensor | None  # [C, D]
    personal: torch.Tensor | None  # [C, D]: P-only (separate), [S; P] (concat) or S + U V^T
    anchor: torch.Tensor | None = None  # [C, D] frozen hand-crafted prompt features (fedpgp)
    # θ of a mixed personalised CLIP head: normalize((1 - θ) shared + θ personal); None: the
    # personal features alone (task.methods.heads.head_text).
    mix: float | None = None
    mix_renorm: bool = True  # renormalise the mix (False: PromptFolio's plain weighted sum)


class PromptLearner(nn.Module):
    """Shared and/or private context vectors plus the frozen pieces around them."""

    def __init__(
        self,
        backbone: Backbone,
        class_names: list[str],
        cfg: PromptConfig,
        with_shared: bool = True,
        with_private: bool = True,
        seed: int = 0,
        private_rank: int = 0,
        fusion: str | None = None,
    ) -> None:
        """``private_rank`` > 0: personal context S + U V^T (needs both prompts); ``fusion``
        overrides ``cfg.fusion`` (a method that fixes its fusion, e.g. fedotp)."""
        super().__init__()
        if not class_names:
            raise ValueError("class_names is empty: a prompt learner needs at least one class")
        if not (with_shared or with_private):
            raise ValueError("a prompt learner needs a shared or a private prompt")
        if private_rank < 0:
            raise ValueError(f"private_rank must be >= 0, got {private_rank}")
        if private_rank and not (with_shared and with_private):
            raise ValueError("a low-rank personal part (private_rank > 0) needs S and P")
        self.cfg = cfg
        self.fusion = fusion or cfg.fusion
        if self.fusion not in ("separate", "concat"):
            raise ConfigError(f"fusion must be 'separate' or 'concat', got {self.fusion!r}")
        self.private_rank = int(private_rank)
        self._anchor_cache: torch.Tensor | None = None
        self.class_names = list(class_names)
        # Held in a tuple so the frozen text tower is not a registered submodule: the
        # learner's parameters() and state_dict() are then exactly its context vectors.
        self._frozen = (backbone.text,)
        self.full_length = False  # True: pad every prompt to max_positions (the naive reference)
        # True: one text-tower call per prompt length, so short class names do not pay for the
        # longest (exact where cutting is: causal or masked attention; see encode_contexts). Off
        # by default: on CPU the extra small tower calls cost more than the padding they save
        # (UC Merced's names: 8.6 tokens mean, 10 max; bench.local_step's "length buckets").
        self.bucket_by_length = False
        tower = backbone.text
        self._frozen_tokens(backbone.tokenizer, tower)
        self._init_parameters(backbone.tokenizer, tower, with_shared, with_private, seed)
        longest = self.prefix_embeds.shape[1] + self._personal_ctx_len() + self.longest_suffix
        if longest > tower.max_positions:
            raise ConfigError(
                f"prompts need {longest} tokens, more than the text tower's "
                f"{tower.max_positions}; lower prompt.n-ctx or shorten class names"
            )

    def _frozen_tokens(self, tok: object, tower: TextTower) -> None:
        """The frozen token embeddings around the context: prefix, class-name suffixes (and
        their lengths, grouped for length buckets), FedPGP's hand-crafted anchor phrase."""
        embedding = tower.token_embedding
        device = embedding.weight.device
        try:
            tokens = tokenize_class_prompts(
                tok, self.class_names, tower.max_positions, tower.pad_id
            )
        except ValueError as err:
            raise ConfigError(f"{err}; shorten the class names") from err
        with torch.no_grad():
            prefix = torch.tensor(tokens.prefix, dtype=torch.long, device=device)
            self.register_buffer("prefix_embeds", embedding(prefix).unsqueeze(0), persistent=False)
            suffix = tokens.suffix.to(device)
            self.register_buffer("suffix_embeds", embedding(suffix), persistent=False)
            anchor_ids = tok(self.cfg.init or ANCHOR_PHRASE, add_special_tokens=False).input_ids
            anchor = embedding(torch.tensor(anchor_ids, device=device)).detach().clone()
        self.register_buffer("suffix_len", tokens.suffix_len.to(device), persistent=False)
        self.register_buffer("anchor_ctx", anchor, persistent=False)
        self._buckets = [
            (int(n), (tokens.suffix_len == n).nonzero().flatten().to(device))
            for n in torch.unique(tokens.suffix_len).tolist()
        ]

    def _init_parameters(
        self, tok: object, tower: TextTower, with_shared: bool, with_private: bool, seed: int
    ) -> None:
        """S from the phrase (front-padded with noise), P from the phrase or noise, or FedPGP's
        low-rank factors; one generator seeded by ``seed``, drawn in this order."""
        cfg = self.cfg
        embedding = tower.token_embedding
        device = embedding.weight.device
        generator = torch.Generator().manual_seed(seed)
        phrase = self._phrase_embeds(tok, embedding)
        width = embedding.weight.shape[1]
        self.shared_ctx: nn.Parameter | None = None
        self.private_ctx: nn.Parameter | None = None
        if with_shared:
            self.shared_ctx = nn.Parameter(self._init_ctx(phrase, width, generator, device))
        if with_private and self.private_rank:
            # U and V ~ N(0, init_std^2) (FedPGP), so S + U V^T starts next to S.
            factors = torch.randn(cfg.n_ctx + width, self.private_rank, generator=generator)
            self.private_ctx = nn.Parameter((factors * cfg.init_std).to(device))
        elif with_private:
            use_phrase = cfg.private_init == "phrase"
            init = self._init_ctx(phrase if use_phrase else None, width, generator, device)
            self.private_ctx = nn.Parameter(init)

    @property
    def encoder(self) -> TextTower:
        return self._frozen[0]

    @property
    def longest_suffix(self) -> int:
        return int(self.suffix_len.max())

    @property
    def device(self) -> torch.device:
        return self.suffix_embeds.device

    # -- construction helpers -------------------------------------------------------------
    def _phrase_embeds(self, tok: object, embedding: nn.Embedding) -> torch.Tensor | None:
        if not self.cfg.init:
            return None
        phrase_ids = tok(self.cfg.init, add_special_tokens=False).input_ids
        if len(phrase_ids) > self.cfg.n_ctx:
            raise ConfigError(
                f"prompt.init {self.cfg.init!r} is {len(phrase_ids)} tokens, more than "
                f"prompt.n-ctx={self.cfg.n_ctx}; raise n-ctx or shorten the phrase"
            )
        with torch.no_grad():
            ids = torch.tensor(phrase_ids, device=embedding.weight.device)
            return embedding(ids).detach().clone()

    def _init_ctx(
        self,
        phrase: torch.Tensor | None,
        width: int,
        generator: torch.Generator,
        device: torch.device,
    ) -> torch.Tensor:
        """Phrase embeddings, front-padded with small random vectors up to n_ctx."""
        n_phrase = 0 if phrase is None else phrase.shape[0]
        noise = torch.randn(self.cfg.n_ctx - n_phrase, width, generator=generator)
        ctx = noise * self.cfg.init_std
        if phrase is not None:
            ctx = torch.cat([ctx, phrase.float().cpu()], dim=0)
        return ctx.to(device)  # parameters stay fp32 even on a half-precision backbone

    def _personal_ctx_len(self) -> int:
        n = self.cfg.n_ctx
        if self.private_ctx is None or self.private_rank:
            return n
        return 2 * n if self.fusion == "concat" and self.shared_ctx is not None else n

    # -- forward --------------------------------------------------------------------------
    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U [h, r], V [W, r]) of the low-rank personal part (private_rank > 0 only)."""
        if not self.private_rank or self.private_ctx is None:
            raise ValueError("this learner has no low-rank personal part")
        n = self.cfg.n_ctx
        return self.private_ctx[:n], self.private_ctx[n:]

    def personal_context(self) -> torch.Tensor | None:
        """Context of the personal prompt: P (separate), [S; P] (concat) or S + U V^T (low rank);
        None without a private part."""
        if self.private_ctx is None:
            return None
        if self.private_rank:
            u, v = self.low_rank_factors()
            return self.shared_ctx + u @ v.t()
        if self.fusion == "concat" and self.shared_ctx is not None:
            return torch.cat([self.shared_ctx, self.private_ctx], dim=0)
        return self.private_ctx

    @torch.no_grad()
    def anchor_features(self) -> torch.Tensor:
        """Frozen features of the hand-crafted prompt "<prompt.init> {class}." (computed once)."""
        if self._anchor_cache is None or self._anchor_cache.device != self.device:
            feats = self.encode_contexts([self.anchor_ctx])
            self._anchor_cache = F.normalize(feats.float(), dim=-1)
        return self._anchor_cache

    def forward(
        self, shared: bool = True, personal: bool = True, anchor: bool = False
    ) -> PromptFeatures:
        """Encode the requested prompts for every class in one batched text-encoder call
        (``anchor``: also return the frozen hand-crafted prompt features)."""
        contexts: list[torch.Tensor] = []
        if shared and self.shared_ctx is not None:
            contexts.append(self.shared_ctx)
        personal_ctx = self.personal_context() if personal else None
        if personal_ctx is not None:
            contexts.append(personal_ctx)
        anchor_feats = self.anchor_features() if anchor else None
        if not contexts:
            return PromptFeatures(None, None, anchor_feats)
        feats = F.normalize(self.encode_contexts(contexts).float(), dim=-1)
        chunks = list(feats.split(len(self.class_names)))
        shared_feats = chunks.pop(0) if shared and self.shared_ctx is not None else None
        personal_feats = chunks.pop(0) if personal_ctx is not None else None
        return PromptFeatures(shared_feats, personal_feats, anchor_feats)

    def encode_contexts(self, contexts: list[torch.Tensor]) -> torch.Tensor:
        """Unnormalised text features [len(contexts) * C, D] for several context tensors.

        Exact shortcuts where the text tower allows them (causal, or bidirectional with padding
        masked): sequences are cut to their real length, and with ``bucket_by_length`` prompts
        of equal length are encoded together with no padding at all (one tower call per
        length). Otherwise (SigLIP), and with ``full_length``, every prompt is padded to the
        tower's full length. tests/task/model/test_prompts.py and test_backbone_families.py
        check that each shortcut gives the same features and gradients.
        """
        tower = self.encoder
        if self.full_length or not tower.exact_cut:
            return self._encode_padded(contexts, tower.max_positions)
        if not self.bucket_by_length or len(self._buckets) == 1:
            n_prefix = self.prefix_embeds.shape[1]
            length = max(n_prefix + c.shape[0] + self.longest_suffix for c in contexts)
            return self._encode_padded(contexts, length)
        return self._encode_bucketed(contexts)

    def _encode_padded(self, contexts: list[torch.Tensor], length: int) -> torch.Tensor:
        n_classes = len(self.class_names)
        n_prefix = self.prefix_embeds.shape[1]
        dtype = self.suffix_embeds.dtype
        seqs, lengths = [], []
        for ctx in contexts:
            k = ctx.shape[0]
            seqs.append(
                torch.cat(
                    [
                        self.prefix_embeds.expand(n_classes, -1, -1),
                        ctx.to(dtype).unsqueeze(0).expand(n_classes, -1, -1),
                        self.suffix_embeds[:, : length - n_prefix - k],
                    ],
                    dim=1,
                )
            )
            lengths.append(self.suffix_len + n_prefix + k)
        return self.encoder(torch.cat(seqs), torch.cat(lengths))

    def _encode_bucketed(self, contexts: list[torch.Tensor]) -> torch.Tensor:
        """Group (context, class) prompts by total length; encode each group unpadded."""
        n_classes = len(self.class_names)
        dtype = self.suffix_embeds.dtype
        groups: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for index, ctx in enumerate(contexts):
            for suffix_len, classes in self._buckets:
                n = classes.numel()
                seq = torch.cat(
                    [
                        self.prefix_embeds.expand(n, -1, -1),
                        ctx.to(dtype).unsqueeze(0).expand(n, -1, -1),
                        self.suffix_embeds[classes, :suffix_len],
                    ],
                    dim=1,
                )
                groups.setdefault(seq.shape[1], []).append((index * n_classes + classes, seq))
        outputs, rows = [], []
        for length, items in sorted(groups.items()):
            seqs = torch.cat([seq for _, seq in items])
            lengths = torch.full((seqs.shape[0],), length, device=seqs.device)
            outputs.append(self.encoder(seqs, lengths))
            rows.append(torch.cat([r for r, _ in items]))
        order = torch.cat(rows)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(outputs)[inverse]


def load_prompts(
    learner: PromptLearner, state: Mapping[str, torch.Tensor], strict: bool = True
) -> PromptLearner:
    """Load context tensors, refusing a shape this backbone and prompt config cannot hold (the
    error says which tensor and why, e.g. a run trained with another model). ``strict``: the
    state holds every prompt of the learner; otherwise a subset (e.g. only the shared one)."""
    expected = learner.state_dict()
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise ValueError(f"this learner has no {unknown} (it holds {sorted(expected)})")
    missing = sorted(set(expected) - set(state))
    if strict and missing:
        raise ValueError(f"missing prompt tensor(s) {missing}")
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{name} has shape {tuple(value.shape)} but this backbone and prompt config "
                f"(prompt.n-ctx={learner.cfg.n_ctx}, rank {learner.private_rank}) need "
                f"{tuple(expected[name].shape)}; was the run trained with another model?"
            )
    learner.load_state_dict(
        {k: v.to(expected[k].device, expected[k].dtype) for k, v in state.items()}, strict=strict
    )
    return learner
