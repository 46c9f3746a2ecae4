"""Typed run configuration, parsed once from Flower's flat run config.

Flower run config is a flat mapping of scalar values (``"train.lr" = 0.002``). Every key is
``<section>.<field>`` with hyphens for underscores; this module turns the mapping into nested
dataclasses and rejects unknown keys, wrong types and impossible values before any work starts.
Nothing deeper in the code reads the raw mapping.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from task.data.config import DataConfig


class ConfigError(ValueError):
    """A run-config key is unknown, has the wrong type, or holds an impossible value."""


@dataclass
class ModelConfig:
    """Which frozen CLIP to load and where to run it."""

    name: str = "openai/clip-vit-base-patch16"  # hub id or local directory
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | bfloat16 | float16 (float16 on CUDA only)

    def validate(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if not self.name:
            raise ConfigError("model.name is empty: give a hub id or a local model directory")


@dataclass
class PromptConfig:
    """Shape and initialisation of the learnable text context."""

    n_ctx: int = 4  # context tokens per prompt (h)
    init: str = "a photo of a"  # phrase whose token embeddings initialise S; "" -> random
    fusion: str = "separate"  # separate | concat
    private_init: str = "phrase"  # phrase | random
    init_std: float = 0.02
    rank: int = 2  # r of the low-rank personal part U V^T (fedpgp only)

    def validate(self) -> None:
        if self.n_ctx < 1 or self.n_ctx > 32:
            raise ConfigError(f"prompt.n-ctx must be in [1, 32], got {self.n_ctx}")
        if self.rank < 1 or self.rank > 64:
            raise ConfigError(f"prompt.rank must be in [1, 64], got {self.rank}")
        _choice("prompt.fusion", self.fusion, ("separate", "concat"))
        _choice("prompt.private-init", self.private_init, ("phrase", "random"))
        if self.init_std <= 0:
            raise ConfigError(f"prompt.init-std must be > 0, got {self.init_std}")


@dataclass
class MethodConfig:
    """Which registered method trains (see task.methods)."""

    name: str = "fedrsclip"

    def validate(self) -> None:
        from task.methods import METHODS  # local import: methods imports config

        if self.name not in METHODS:
            raise ConfigError(
                f"method.name {self.name!r} is unknown; choose one of {sorted(METHODS)}"
            )


@dataclass
class LossConfig:
    """Weights and solver settings of the losses (see docs/method.md)."""

    alpha: float = 1.0  # weight of the dual prompt alignment loss
    gamma: float = 1.0  # weight of CE on the global (shared-only) logits, methods with P
    beta: float = 0.1  # weight of the cross-modal OT alignment loss
    dpa_scale: float = 10.0  # s: scale of the dual prompt alignment logits
    ot_reg: float = 0.1  # lambda: entropic regulariser of Sinkhorn
    ot_iters: int = 100  # maximum Sinkhorn iterations
    ot_tol: float = 1e-6  # Sinkhorn marginal tolerance
    ot_solver: str = "auto"  # auto: exact closed forms for 1-2 prompts per class; pot: always POT
    head: str = "clip+ot"  # clip | ot | clip+ot: which logits classify
    ot_marginal_reg: float = 0.0  # rho: KL marginal penalty of unbalanced OT; 0 -> balanced
    prox_mu: float = 0.01  # mu of FedProx's proximal term (mu/2)||S - S_global||^2 (fedprox)
    pgp_weight: float = 1.0  # weight of FedPGP's prompt-wise contrastive loss (fedpgp)
    pgp_temp: float = 1.0  # temperature of FedPGP's contrastive logits (fedpgp)

    def validate(self) -> None:
        weights = (
            ("loss.alpha", self.alpha),
            ("loss.beta", self.beta),
            ("loss.gamma", self.gamma),
            ("loss.ot-marginal-reg", self.ot_marginal_reg),
            ("loss.prox-mu", self.prox_mu),
            ("loss.pgp-weight", self.pgp_weight),
        )
        for key, value in weights:
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        if self.dpa_scale <= 0:
            raise ConfigError(f"loss.dpa-scale must be > 0, got {self.dpa_scale}")
        if self.ot_reg <= 0:
            raise ConfigError(f"loss.ot-reg (Sinkhorn lambda) must be > 0, got {self.ot_reg}")
        if self.ot_iters < 1:
            raise ConfigError(f"loss.ot-iters must be >= 1, got {self.ot_iters}")
        if self.pgp_temp <= 0:
            raise ConfigError(f"loss.pgp-temp must be > 0, got {self.pgp_temp}")
        _choice("loss.head", self.head, ("clip", "ot", "clip+ot"))
        _choice("loss.ot-solver", self.ot_solver, ("auto", "pot"))


@dataclass
class TrainConfig:
    """Local optimisation on one client."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.002
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"train.epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch-size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        _choice("train.optimizer", self.optimizer, ("sgd", "adamw"))


@dataclass
class CacheConfig:
    """Where frozen image features are cached on local disk."""

    dir: str = ".cache/features"


@dataclass
class RunConfig:
    """The whole configuration of one run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            check = getattr(getattr(self, section.name), "validate", None)
            if check is not None:
                try:
                    check()
                except ConfigError:
                    raise
                except ValueError as err:  # sections defined elsewhere raise plain ValueError
                    raise ConfigError(str(err)) from err


def parse_run_config(flat: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a validated RunConfig from flat ``section.field`` keys (hyphens or underscores).

    Keys not under a known section, or naming no field, raise ConfigError with a suggestion.
    """
    cfg = _deep_copy(base) if base is not None else RunConfig()
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    for raw_key, value in flat.items():
        section_name, _, field_name = raw_key.partition(".")
        section_name = section_name.replace("-", "_")
        if section_name not in sections or not field_name:
            raise ConfigError(_unknown("section", raw_key, list(sections)))
        section = getattr(cfg, section_name)
        attr = field_name.replace("-", "_")
        fields = {f.name: f for f in dataclasses.fields(section)}
        if attr not in fields:
            known = [f"{section_name}.{n.replace('_', '-')}" for n in fields]
            raise ConfigError(_unknown("key", raw_key, known))
        hint = typing.get_type_hints(type(section))[attr]
        setattr(section, attr, _coerce(raw_key, value, hint))
    cfg.validate()
    return cfg


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    """Inverse of parse_run_config: the flat, hyphenated mapping (for run directories)."""
    out: dict[str, Any] = {}
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            out[f"{section.name}.{f.name.replace('_', '-')}"] = getattr(
                getattr(cfg, section.name), f.name
            )
    return out


def _deep_copy(cfg: RunConfig) -> RunConfig:
    return RunConfig(
        **{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    )


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Accept a value only if it already has the field's type (ints widen to floats)."""
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(
        f"{key} must be of type {hint.__name__}, got {type(value).__name__} {value!r}"
    )


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _unknown(kind: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(known)}"
    return f"unknown run-config {kind} {key!r}{hint}"
