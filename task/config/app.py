"""The federated sections of the run config (server, run, client), the whole-app config, run
names and the SuperNode node-config overrides.

Kept free of torch so the launcher and the preflight can parse a run config and name its run
directory in well under a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from task.config.core import RunConfig
from task.config.fields import ConfigError, flatten, key, section_roles

GLOBAL_EVAL_MODES = ("client", "server", "none")
EVAL_MODES = ("fused", "separate")
DP_MODES = ("off", "server", "client")
AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum")  # server_app.aggregate
ON_CORRUPT_MODES = ("error", "quarantine")
WARM_WORKER_MODES = ("off", "auto", "external")
# Run names and experiment ids (they name directories on the server and on every node).
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
# Where and how to report: neither names a run nor defines a setup.
_AUX = {"in_name": False, "setup": False}


@dataclass
class ServerConfig:
    """`server.*` keys: rounds, sampling, evaluation cadence, transport."""

    num_rounds: int = key(3, "rounds; may be raised when resuming", resumable=True, **_AUX)
    fraction_train: float = key(1.0, "share of connected nodes that train each round")
    fraction_evaluate: float = key(1.0, "share of connected nodes that evaluate")
    min_nodes: int = key(2, "wait until this many nodes are connected", setup=False)
    eval_every: int = key(1, "evaluate every k rounds, and always after the last")
    eval_mode: str = key(
        "fused",
        "`fused`: round r's model is evaluated by the clients at the start of round r + 1, in "
        "the training message that carries it (one message per round; a last evaluate-only "
        "message after the final round); `separate`: an evaluate message after each round. "
        "Same model, same images, same accuracies",
        resumable=True,
        **_AUX,
    )
    global_eval: str = key(
        "client",
        "shared-only accuracy: `client` (over the clients' test splits, together the global "
        "test set), `server`, or `none`",
    )
    fp16_transport: bool = key(
        False,
        "send the shared prompt as fp16 both ways (halves the payload; averaging stays fp32)",
    )
    timeout: float = key(
        3600.0, "seconds to wait for replies each round", resumable=True, setup=False
    )
    min_replies: int = key(
        0,
        "valid training replies a round needs; fewer fails the round (nothing saved; a "
        "restart replays it); <= `server.min-nodes`; `0`: 2, or 1 with `server.min-nodes=1` "
        "(one reply alone would become the global model)",
        resumable=True,
        setup=False,
    )
    max_norm_ratio: float = key(
        10.0,
        "reject an update whose distance from the sent prompt exceeds this x the round's "
        "median; `0` turns it off",
    )
    max_examples_ratio: float = key(
        10.0,
        "reject a reply whose `num-examples` exceeds this x the round's median claim (only "
        "partitions whose size the server cannot list, i.e. `data.partitioner=local`; other "
        "claims are checked against the partition's size); `0` turns it off",
    )
    max_update_norm: float = key(
        0.0,
        "reject an update farther (L2) than this from the prompt sent, whatever the others did; "
        "`0`: no absolute bound (with `server.dp=client`, the clipping norm bounds it)",
    )
    dp: str = key(
        "off",
        "`off`, `server`, `client`: Flower's central DP with fixed clipping on the shared "
        "prompt (docs/reliability.md)",
    )
    dp_clipping_norm: float = key(1.0, "C: L2 bound on each client's update")
    dp_noise_multiplier: float = key(1.0, "z: noise std = z·C / clients sampled")
    aggregation: str = key(
        "fedavg",
        "how the accepted replies' shared tensors become the global ones: `fedavg` (weighted "
        "by examples), or a robust rule that ignores the claimed counts: `median` "
        "(coordinate-wise), `trimmed-mean`, `krum` (docs/reliability.md)",
    )
    trim_fraction: float = key(
        0.2, "`trimmed-mean`: share of replies dropped at each end of every coordinate, < 0.5"
    )
    krum_byzantine: int = key(
        1, "`krum`: replies assumed malicious (f); a round needs 2f + 3 replies for its bound"
    )

    def _validate_aggregation(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"server.aggregation must be one of {list(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"server.trim-fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.krum_byzantine < 0:
            raise ConfigError(f"server.krum-byzantine must be >= 0, got {self.krum_byzantine}")
        if self.aggregation != "fedavg" and self.dp != "off":
            raise ConfigError(
                f"server.aggregation={self.aggregation} with server.dp={self.dp}: the DP noise is "
                "calibrated for the mean of clipped updates. Fix: server.aggregation=fedavg, or "
                "server.dp=off"
            )
        need = 2 * self.krum_byzantine + 3
        if self.aggregation == "krum" and self.replies_needed < need:
            raise ConfigError(
                f"server.aggregation=krum with server.krum-byzantine={self.krum_byzantine} needs "
                f"at least {need} replies a round, but server.min-replies resolves to "
                f"{self.replies_needed}. Fix: raise server.min-replies (and server.min-nodes) "
                f"to {need}, or lower server.krum-byzantine"
            )

    def validate(self) -> None:
        if self.num_rounds < 1:
            raise ConfigError(f"server.num-rounds must be >= 1, got {self.num_rounds}")
        for name, v in (
            ("server.fraction-train", self.fraction_train),
            ("server.fraction-evaluate", self.fraction_evaluate),
        ):
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {v}")
        if self.min_nodes < 1:
            raise ConfigError(f"server.min-nodes must be >= 1, got {self.min_nodes}")
        if self.eval_every < 1:
            raise ConfigError(f"server.eval-every must be >= 1, got {self.eval_every}")
        if self.eval_mode not in EVAL_MODES:
            raise ConfigError(
                f"server.eval-mode must be one of {list(EVAL_MODES)}, got {self.eval_mode!r}"
            )
        if self.global_eval not in GLOBAL_EVAL_MODES:
            raise ConfigError(
                f"server.global-eval must be one of {list(GLOBAL_EVAL_MODES)}, "
                f"got {self.global_eval!r}"
            )
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"server.timeout must be > 0, got {self.timeout}")
        if self.min_replies < 0:
            raise ConfigError(f"server.min-replies must be >= 0 (0: auto), got {self.min_replies}")
        if self.min_replies > self.min_nodes:
            raise ConfigError(
                f"server.min-replies ({self.min_replies}) > server.min-nodes ({self.min_nodes}): "
                "a round could never collect enough replies. Fix: raise server.min-nodes or "
                "lower server.min-replies"
            )
        _median_ratio("server.max-norm-ratio", self.max_norm_ratio)
        _median_ratio("server.max-examples-ratio", self.max_examples_ratio)
        if not self.max_update_norm >= 0:
            raise ConfigError(
                f"server.max-update-norm must be >= 0 (0 = off), got {self.max_update_norm}"
            )
        if self.dp not in DP_MODES:
            raise ConfigError(f"server.dp must be one of {list(DP_MODES)}, got {self.dp!r}")
        self._validate_aggregation()
        if not (math.isfinite(self.dp_clipping_norm) and self.dp_clipping_norm > 0):
            raise ConfigError(f"server.dp-clipping-norm must be > 0, got {self.dp_clipping_norm}")
        if not 0 <= self.dp_noise_multiplier <= 1e3:
            raise ConfigError(
                f"server.dp-noise-multiplier must be in [0, 1000], got {self.dp_noise_multiplier}"
            )
        if self.dp_clipping_norm > 1e6:
            raise ConfigError(
                f"server.dp-clipping-norm must be <= 1e6, got {self.dp_clipping_norm}"
            )

    @property
    def update_norm_cap(self) -> float:
        """The absolute bound on an update: client-side DP promises the clipping norm (a small
        margin for float error), else server.max-update-norm."""
        if self.dp == "client":
            return self.dp_clipping_norm * (1 + 1e-4)
        return self.max_update_norm

    @property
    def replies_needed(self) -> int:
        """Valid training replies a round needs (server.min-replies, 0 = auto)."""
        return self.min_replies or min(2, self.min_nodes)


def _median_ratio(name: str, value: float) -> None:
    """A bound above the round's median: 0 (off) or >= 1."""
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be >= 0 (0 = off), got {value}")
    if 0 < value < 1:
        raise ConfigError(f"{name} must be 0 (off) or >= 1 (a bound above the median), got {value}")


@dataclass
class RunSection:
    """`run.*` keys: where the run directory is and whether to resume it."""

    name: str = key(
        "",
        "run directory name; empty: derived from the config (stable, so re-running resumes)",
        **_AUX,
    )
    dir: str = key("runs", "base folder of run directories", resumable=True, path=True, **_AUX)
    resume: bool = key(
        True,
        "continue an existing run; false with an existing directory is an error",
        resumable=True,
        **_AUX,
    )
    tensorboard: bool = key(
        True,
        "TensorBoard scalars per round in `<run dir>/tensorboard/` (`tensorboard --logdir runs`)",
        resumable=True,
        **_AUX,
    )

    def validate(self) -> None:
        if self.name and not SAFE_NAME.fullmatch(self.name):
            raise ConfigError(
                f"run.name must be letters, digits, '.', '_' or '-' (not starting with '.'), "
                f"at most 200 characters; got {self.name!r}"
            )


@dataclass
class ClientSection:
    """`client.*` keys (simulation; a deployed SuperNode's node config overrides private-dir)."""

    private_dir: str = key(
        ".cache/private",
        "private-prompt store in simulation (node config `private-dir` overrides)",
        path=True,
        node="private-dir",
        **_AUX,
    )
    progress: bool = key(
        False, "progress bars for client feature extraction", resumable=True, **_AUX
    )
    verbose: bool = key(
        False,
        "the ClientApp's library progress bars and warnings (weight loading, ...), off by default",
        resumable=True,
        **_AUX,
    )
    on_corrupt: str = key(
        "error",
        "`error` or `quarantine`: a corrupt private prompt or cache file is an error naming "
        "it, or is renamed aside and re-initialised with a warning",
        resumable=True,
        **_AUX,
    )

    warm_worker: str = key(
        "off",
        "deployment: `auto` runs each message in a node-local warm worker (started on first "
        "use; docs/deploy.md), `external` only in one the operator started, `off` in the "
        "ClientApp process itself; results are identical (node config `warm-worker` overrides)",
        resumable=True,
        node="warm-worker",
        **_AUX,
    )

    def validate(self) -> None:
        if not self.private_dir:
            raise ConfigError("client.private-dir is empty")
        if self.warm_worker not in WARM_WORKER_MODES:
            raise ConfigError(
                f"client.warm-worker must be one of {list(WARM_WORKER_MODES)}, "
                f"got {self.warm_worker!r}"
            )
        if self.on_corrupt not in ON_CORRUPT_MODES:
            raise ConfigError(
                f"client.on-corrupt must be one of {list(ON_CORRUPT_MODES)}, "
                f"got {self.on_corrupt!r}"
            )


@dataclass
class AppConfig:
    """Everything a run is configured with: the ML config plus the federated sections."""

    core: RunConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    run: RunSection = field(default_factory=RunSection)
    client: ClientSection = field(default_factory=ClientSection)

    @property
    def run_name(self) -> str:
        return self.run.name or default_run_name(self)

    def sections(self) -> dict[str, object]:
        """Every section object by its key prefix (``model``, ..., ``client``)."""
        core = {f.name: getattr(self.core, f.name) for f in dataclasses.fields(self.core)}
        return {**core, "server": self.server, "run": self.run, "client": self.client}

    def to_flat(self) -> dict[str, Any]:
        return flatten(self.sections())


def check_app(cfg: AppConfig) -> None:
    """Rules that span sections (each section checks its own keys)."""
    if cfg.server.min_nodes > cfg.core.data.num_clients:
        raise ConfigError(
            f"server.min-nodes ({cfg.server.min_nodes}) > data.num-clients "
            f"({cfg.core.data.num_clients}): the server would wait forever for nodes that "
            "cannot exist. Fix: lower server.min-nodes"
        )
    if cfg.core.data.partitioner == "local" and cfg.server.global_eval == "server":
        raise ConfigError(
            "server.global-eval='server' scores the shared prompt on the union of the clients' "
            "test images, but with data.partitioner=local the server sees no images. Fix: use "
            "server.global-eval='client' (the same accuracy, from the clients' replies) or 'none'"
        )


# -- run names ------------------------------------------------------------------------------
# Keys declared after runs were named: in the digest only when set away from their default, so
# that adding them renamed no run (a resume command finds the directory it always found).
_NAMED_WHEN_SET = (
    "server.aggregation",
    "server.trim-fraction",
    "server.krum-byzantine",
    "prompt.gate-lr",
)


def _run_name(cfg: AppConfig, extra_keys: tuple[str, ...]) -> str:
    info = section_roles(cfg.sections())
    flat = {
        k: v
        for k, v in cfg.to_flat().items()
        if (info[k].roles.in_name or k in extra_keys)
        and not (k in _NAMED_WHEN_SET and v == info[k].default)
    }
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()
    d, seed = cfg.core.data, cfg.core.train.seed
    return f"{d.dataset}-{cfg.core.method.name}-{d.num_clients}c-s{seed}-{digest[:6]}"


def default_run_name(cfg: AppConfig) -> str:
    """Readable and stable: re-running the same command resumes the same directory, wherever
    the caches are (keys with ``in_name=False`` are left out of the digest)."""
    return _run_name(cfg, ())


# The keys that left the run-name digest when cache locations stopped naming runs.
_LEGACY_NAME_KEYS = ("cache.dir", "data.cache-dir")


def legacy_run_name(cfg: AppConfig) -> str:
    """The name before cache locations left the digest; the launcher still finds such runs."""
    return _run_name(cfg, _LEGACY_NAME_KEYS)


# -- SuperNode node config ------------------------------------------------------------------
def apply_node_config(cfg: AppConfig, node_config: Mapping[str, Any]) -> AppConfig:
    """The config as one SuperNode runs it: each node-config key that overrides a run-config
    key (declared with ``node=`` on the field) replaces it, when set.

    ``data-root`` replaces ``data.root`` except with ``data.partitioner=local``, where it is the
    node's whole partition and the run config names no data (the node reads it itself).
    """
    sections = cfg.sections()
    replaced: dict[str, dict[str, Any]] = {}
    for info in section_roles(sections).values():
        node_key = info.roles.node
        value = node_config.get(node_key) if node_key else None
        if not value:
            continue
        if node_key == "data-root" and cfg.core.data.partitioner == "local":
            continue
        replaced.setdefault(info.section, {})[info.attr] = str(value)
    if not replaced:
        return cfg
    new = {s: dataclasses.replace(sections[s], **kw) for s, kw in replaced.items()}
    core_fields = {f.name for f in dataclasses.fields(cfg.core)}
    core = dataclasses.replace(cfg.core, **{s: v for s, v in new.items() if s in core_fields})
    return dataclasses.replace(
        cfg, core=core, **{s: v for s, v in new.items() if s not in core_fields}
    )
