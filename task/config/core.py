"""The ML sections of the run config: model, prompt, method, loss, train, cache (+ data)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from task.config.data import DataConfig
from task.config.fields import ConfigError, choice, key

DTYPES = ("float32", "bfloat16", "float16")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,2})?")
# How a personalised CLIP head combines the shared and private prompts (task.methods.personal).
PERSONAL_HEADS = ("private", "mix", "auto", "entropy")


@dataclass
class ModelConfig:
    """Which frozen dual encoder to load and where to run it."""

    name: str = key(
        "openai/clip-vit-base-patch16",
        "hub id or local directory of a supported dual encoder ([Backbones](#backbones))",
    )  # not a path key: a hub id stays as it is (the launcher resolves existing directories)
    device: str = key("auto", "`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`", setup=False)
    dtype: str = key(
        "float32", "`float32`, `bfloat16`, `float16` (CUDA only) for the frozen backbone"
    )

    def validate(self) -> None:
        choice("model.dtype", self.dtype, DTYPES)
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(
                f"model.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )
        if not self.name:
            raise ConfigError("model.name is empty: give a hub id or a local model directory")


@dataclass
class PromptConfig:
    """Shape and initialisation of the learnable text context."""

    n_ctx: int = key(4, "context tokens per prompt (h)")
    init: str = key("a photo of a", "phrase whose token embeddings initialise S; empty: random")
    fusion: str = key(
        "separate", "`separate` (S-only and P-only prompts) or `concat` ([S; P; class])"
    )
    private_init: str = key("phrase", "initialise P from the phrase or `random`")
    init_std: float = key(0.02, "std of random context vectors")
    rank: int = key(2, "rank r of `fedpgp`'s private low-rank part U Vᵀ")
    personal_head: str = key(
        "entropy",
        "class features of `fedrsclip`'s personalised CLIP head: `private` (the personal "
        "prompt's), `mix` (normalize((1 - θ) s_c + θ p_c), θ = `prompt.mix-theta`) or `auto` "
        "(θ chosen per client on its selection split) or `entropy` (θ from the label skew of "
        "the client's own training labels, `prompt.skew-low`/`-high`), docs/method.md §4.3",
    )
    mix_theta: float = key(
        0.4,
        "θ of a mixed head, `promptfolio`'s and `fedrsclip`'s `mix` (0: shared prompt only, "
        "1: private only; 0.4: PromptFolio's runs); `auto`'s fallback",
    )
    mix_holdout: float = key(
        0.2,
        "`auto`: fraction of each client's training images held out of local training to "
        "choose θ on (stratified, fixed per client)",
    )
    mix_grid: int = key(11, "`auto`: θ is chosen from this many evenly spaced values in [0, 1]")
    skew_low: float = key(
        0.1,
        "`entropy`: label skew u = 1 - H(labels)/log C at or below which θ = 0 (the shared prompt)",
    )
    skew_high: float = key(
        0.3, "`entropy`: label skew u at or above which θ = 1 (the private prompt); linear between"
    )
    experts: int = key(10, "`pfedmoap`: experts per client, its own prompt included (K)")
    gate_dim: int = key(128, "`pfedmoap`: width of the attention gate (features pooled to it)")
    gate_heads: int = key(8, "`pfedmoap`: attention heads of the gate")
    gate_scaling: float = key(10.0, "`pfedmoap`: scale of the gate's attention scores")
    gate_lr: float = key(
        0.01,
        "`pfedmoap`: learning rate of the gate's own SGD (momentum 0.9, weight decay 5e-4, as "
        "the authors' gate optimiser); the prompt keeps the run's optimiser",
    )

    def validate(self) -> None:
        if self.n_ctx < 1 or self.n_ctx > 32:
            raise ConfigError(f"prompt.n-ctx must be in [1, 32], got {self.n_ctx}")
        if self.rank < 1 or self.rank > 64:
            raise ConfigError(f"prompt.rank must be in [1, 64], got {self.rank}")
        choice("prompt.fusion", self.fusion, ("separate", "concat"))
        choice("prompt.private-init", self.private_init, ("phrase", "random"))
        if self.init_std <= 0:
            raise ConfigError(f"prompt.init-std must be > 0, got {self.init_std}")
        choice("prompt.personal-head", self.personal_head, PERSONAL_HEADS)
        if not 0.0 <= self.mix_theta <= 1.0:
            raise ConfigError(f"prompt.mix-theta must be in [0, 1], got {self.mix_theta}")
        if not 0.0 < self.mix_holdout < 1.0:
            raise ConfigError(f"prompt.mix-holdout must be in (0, 1), got {self.mix_holdout}")
        if not 2 <= self.mix_grid <= 101:
            raise ConfigError(f"prompt.mix-grid must be in [2, 101], got {self.mix_grid}")
        if not 0.0 <= self.skew_low < self.skew_high <= 1.0:
            raise ConfigError(
                f"prompt.skew-low ({self.skew_low}) and prompt.skew-high ({self.skew_high}) must "
                "satisfy 0 <= low < high <= 1"
            )
        if not 1 <= self.experts <= 1000:
            raise ConfigError(f"prompt.experts must be in [1, 1000], got {self.experts}")
        if not 1 <= self.gate_heads <= self.gate_dim <= 4096 or self.gate_dim % self.gate_heads:
            raise ConfigError(
                f"prompt.gate-dim ({self.gate_dim}) must be a multiple of prompt.gate-heads "
                f"({self.gate_heads}), both >= 1"
            )
        if not (math.isfinite(self.gate_scaling) and self.gate_scaling > 0):
            raise ConfigError(f"prompt.gate-scaling must be > 0, got {self.gate_scaling}")
        if not (math.isfinite(self.gate_lr) and 0 < self.gate_lr <= 10):
            raise ConfigError(f"prompt.gate-lr must be in (0, 10], got {self.gate_lr}")


# The methods a run may name, in report order; task.methods registers exactly these (one module
# each), so this tuple is the only list of them.
METHOD_NAMES = (
    "zeroshot",
    "local",
    "promptfl",
    "fedprox",
    "fedotp",
    "fedpgp",
    "promptfolio",
    "pfedmoap",
    "fedrsclip",
    "fedrsclip-noprivate",
    "fedrsclip-nodpa",
    "fedrsclip-noot",
    "fedrsclip-separate",
    "fedrsclip-concat",
    "fedavg-full",
)


@dataclass
class MethodConfig:
    """Which registered method trains (see task.methods)."""

    name: str = key("fedrsclip", "one of the methods listed in [Running](#running)", setup=False)

    def validate(self) -> None:
        if self.name not in METHOD_NAMES:
            raise ConfigError(
                f"method.name {self.name!r} is unknown; choose one of {sorted(METHOD_NAMES)}"
            )


@dataclass
class LossConfig:
    """Weights and solver settings of the losses (see docs/method.md)."""

    alpha: float = key(1.0, "weight of the dual prompt alignment loss")
    gamma: float = key(
        1.0,
        "weight of CE on the global (shared-only) logits, for methods with a private prompt",
    )
    beta: float = key(0.1, "weight of the cross-modal OT alignment loss")
    dpa_scale: float = key(10.0, "scale s of the dual prompt alignment logits")
    ot_reg: float = key(0.1, "Sinkhorn entropic regulariser λ")
    ot_iters: int = key(100, "maximum Sinkhorn iterations")
    ot_tol: float = key(1e-6, "Sinkhorn marginal tolerance")
    ot_solver: str = key(
        "auto",
        "`auto`: exact closed forms for 1–2 prompts per class (docs/method.md §3); `pot`: "
        "POT's Sinkhorn always",
    )
    head: str = key("clip+ot", "logits: `clip`, `ot` or their mean `clip+ot`")
    ot_marginal_reg: float = key(0.0, "ρ, marginal penalty of unbalanced OT; 0 = balanced Sinkhorn")
    prox_mu: float = key(0.01, "μ of `fedprox`'s proximal term")
    pgp_weight: float = key(1.0, "weight of `fedpgp`'s contrastive loss")
    pgp_temp: float = key(1.0, "temperature of `fedpgp`'s contrastive logits")
    moe_lambda: float = key(0.5, "λ, weight of `pfedmoap`'s local logits beside the experts'")

    def validate(self) -> None:
        weights = (
            ("loss.alpha", self.alpha),
            ("loss.beta", self.beta),
            ("loss.gamma", self.gamma),
            ("loss.ot-marginal-reg", self.ot_marginal_reg),
            ("loss.prox-mu", self.prox_mu),
            ("loss.pgp-weight", self.pgp_weight),
            ("loss.moe-lambda", self.moe_lambda),
        )
        for name, value in weights:
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.dpa_scale <= 0:
            raise ConfigError(f"loss.dpa-scale must be > 0, got {self.dpa_scale}")
        if self.ot_reg <= 0:
            raise ConfigError(f"loss.ot-reg (Sinkhorn lambda) must be > 0, got {self.ot_reg}")
        if self.ot_iters < 1:
            raise ConfigError(f"loss.ot-iters must be >= 1, got {self.ot_iters}")
        if not 0 < self.ot_tol < 1:
            raise ConfigError(f"loss.ot-tol must be in (0, 1), got {self.ot_tol}")
        if self.pgp_temp <= 0:
            raise ConfigError(f"loss.pgp-temp must be > 0, got {self.pgp_temp}")
        choice("loss.head", self.head, ("clip", "ot", "clip+ot"))
        choice("loss.ot-solver", self.ot_solver, ("auto", "pot"))


@dataclass
class TrainConfig:
    """Local optimisation on one client."""

    epochs: int = key(1, "local epochs per round")
    batch_size: int = key(32, "local batch size")
    lr: float = key(0.002, "learning rate")
    optimizer: str = key("sgd", "`sgd` (with momentum) or `adamw`")
    momentum: float = key(0.9, "SGD momentum")
    weight_decay: float = key(0.0, "weight decay")
    seed: int = key(0, "seed of initialisation and shuffling", setup=False)

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"train.epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch-size must be >= 1, got {self.batch_size}")
        if not 0 < self.lr <= 10:
            raise ConfigError(f"train.lr must be in (0, 10], got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight-decay must be >= 0, got {self.weight_decay}")
        choice("train.optimizer", self.optimizer, ("sgd", "adamw"))


@dataclass
class CacheConfig:
    """Where frozen image features are cached on local disk."""

    # Where a cache lives changes no result (entries are keyed by content): moving it must
    # neither rename nor orphan the runs that used it.
    dir: str = key(
        ".cache/features",
        "frozen image-feature cache directory (node config `cache-dir` overrides)",
        resumable=True,
        in_name=False,
        path=True,
        node="cache-dir",
        setup=False,
    )


@dataclass
class RunConfig:
    """The ML configuration of one run (the federated sections are in task.config.app)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    data: DataConfig = field(default_factory=DataConfig)
