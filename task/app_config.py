"""The federated layer's run configuration (server/run/client sections) and run names.

Kept apart from task.federated (which imports torch and transformers) so the launcher and the
preflight can parse a run config and name its run directory in well under a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from task.config import ConfigError, RunConfig, parse_run_config, to_flat

GLOBAL_EVAL_MODES = ("client", "server", "none")
DP_MODES = ("off", "server", "client")
ON_CORRUPT_MODES = ("error", "quarantine")


# -- configuration of the federated layer ---------------------------------------------------
@dataclass
class ServerConfig:
    """`server.*` keys: rounds, sampling, evaluation cadence, transport."""

    num_rounds: int = 3
    fraction_train: float = 1.0  # share of connected nodes that train each round
    fraction_evaluate: float = 1.0  # share of connected nodes that evaluate
    min_nodes: int = 2  # wait until this many nodes are connected
    eval_every: int = 1  # evaluate every k rounds (and always after the last)
    global_eval: str = "client"  # client | server | none: where the shared-only model is scored
    fp16_transport: bool = False  # send the shared prompt as float16 both ways
    timeout: float = 3600.0  # seconds to wait for replies each round
    min_replies: int = 1  # valid training replies a round needs, else it fails (not saved)
    max_norm_ratio: float = 10.0  # reject updates with norm > ratio x round median; 0 = off
    max_examples_ratio: float = 10.0  # reject num-examples > ratio x round median; 0 = off
    dp: str = "off"  # off | server | client: Flower's DP fixed-clipping on the shared prompt
    dp_clipping_norm: float = 1.0  # C: L2 bound of each client's shared-prompt update
    dp_noise_multiplier: float = 1.0  # z: Gaussian noise std = z * C / clients sampled

    def validate(self) -> None:
        if self.num_rounds < 1:
            raise ConfigError(f"server.num-rounds must be >= 1, got {self.num_rounds}")
        for key, v in (
            ("server.fraction-train", self.fraction_train),
            ("server.fraction-evaluate", self.fraction_evaluate),
        ):
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"{key} must be in (0, 1], got {v}")
        if self.min_nodes < 1:
            raise ConfigError(f"server.min-nodes must be >= 1, got {self.min_nodes}")
        if self.eval_every < 1:
            raise ConfigError(f"server.eval-every must be >= 1, got {self.eval_every}")
        if self.global_eval not in GLOBAL_EVAL_MODES:
            raise ConfigError(
                f"server.global-eval must be one of {list(GLOBAL_EVAL_MODES)}, "
                f"got {self.global_eval!r}"
            )
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"server.timeout must be > 0, got {self.timeout}")
        if self.min_replies < 1:
            raise ConfigError(f"server.min-replies must be >= 1, got {self.min_replies}")
        if self.min_replies > self.min_nodes:
            raise ConfigError(
                f"server.min-replies ({self.min_replies}) > server.min-nodes ({self.min_nodes}): "
                "a round could never collect enough replies. Fix: raise server.min-nodes or "
                "lower server.min-replies"
            )
        if not (math.isfinite(self.max_norm_ratio) and self.max_norm_ratio >= 0):
            raise ConfigError(
                f"server.max-norm-ratio must be >= 0 (0 = off), got {self.max_norm_ratio}"
            )
        if 0 < self.max_norm_ratio < 1:
            raise ConfigError(
                f"server.max-norm-ratio must be 0 (off) or >= 1 (a bound above the median), "
                f"got {self.max_norm_ratio}"
            )
        if not (math.isfinite(self.max_examples_ratio) and self.max_examples_ratio >= 0):
            raise ConfigError(
                f"server.max-examples-ratio must be >= 0 (0 = off), got {self.max_examples_ratio}"
            )
        if 0 < self.max_examples_ratio < 1:
            raise ConfigError(
                f"server.max-examples-ratio must be 0 (off) or >= 1 (a bound above the median), "
                f"got {self.max_examples_ratio}"
            )
        if self.dp not in DP_MODES:
            raise ConfigError(f"server.dp must be one of {list(DP_MODES)}, got {self.dp!r}")
        if not (math.isfinite(self.dp_clipping_norm) and self.dp_clipping_norm > 0):
            raise ConfigError(f"server.dp-clipping-norm must be > 0, got {self.dp_clipping_norm}")
        if not (math.isfinite(self.dp_noise_multiplier) and self.dp_noise_multiplier >= 0):
            raise ConfigError(
                f"server.dp-noise-multiplier must be >= 0, got {self.dp_noise_multiplier}"
            )


@dataclass
class RunSection:
    """`run.*` keys: where the run directory is and whether to resume it."""

    name: str = ""  # "" -> derived from dataset, method, clients, seed and a config hash
    dir: str = "runs"
    resume: bool = True  # continue runs/<name> from its last completed round if it exists

    def validate(self) -> None:
        if "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"run.name must be a plain directory name, got {self.name!r}")


@dataclass
class ClientSection:
    """`client.*` keys (simulation; a deployed SuperNode's node config overrides private-dir)."""

    private_dir: str = ".cache/private"  # base of the private prompt store
    progress: bool = False  # tqdm bars for feature extraction on clients
    on_corrupt: str = "error"  # error | quarantine: a private prompt or cache file fails its check

    def validate(self) -> None:
        if not self.private_dir:
            raise ConfigError("client.private-dir is empty")
        if self.on_corrupt not in ON_CORRUPT_MODES:
            raise ConfigError(
                f"client.on-corrupt must be one of {list(ON_CORRUPT_MODES)}, "
                f"got {self.on_corrupt!r}"
            )


@dataclass
class AppConfig:
    """Everything a run is configured with: the core config plus the federated sections."""

    core: RunConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    run: RunSection = field(default_factory=RunSection)
    client: ClientSection = field(default_factory=ClientSection)

    @property
    def run_name(self) -> str:
        return self.run.name or default_run_name(self)

    def to_flat(self) -> dict[str, Any]:
        out = to_flat(self.core)
        for section in ("server", "run", "client"):
            obj = getattr(self, section)
            for f in dataclasses.fields(obj):
                out[f"{section}.{f.name.replace('_', '-')}"] = getattr(obj, f.name)
        return out


APP_SECTIONS = {"server": ServerConfig, "run": RunSection, "client": ClientSection}


def parse_app_config(flat: Mapping[str, Any]) -> AppConfig:
    """Split the flat run config by section: core keys go to task.config, the rest here."""
    core_keys: dict[str, Any] = {}
    sections = {name: cls() for name, cls in APP_SECTIONS.items()}
    for key, value in flat.items():
        section_name, _, field_name = key.partition(".")
        if section_name not in sections:
            core_keys[key] = value
            continue
        obj = sections[section_name]
        attr = field_name.replace("-", "_")
        hints = typing.get_type_hints(type(obj))
        if attr not in hints:
            known = sorted(f"{section_name}.{n.replace('_', '-')}" for n in hints)
            raise ConfigError(f"unknown run-config key {key!r}; known: {known}")
        setattr(obj, attr, _coerce(key, value, hints[attr]))
    for obj in sections.values():
        obj.validate()
    cfg = AppConfig(parse_run_config(core_keys), **sections)
    if cfg.core.data.partitioner == "local" and cfg.server.global_eval == "server":
        raise ConfigError(
            "server.global-eval='server' scores the shared prompt on the union of the clients' "
            "test images, but with data.partitioner=local the server sees no images. Fix: use "
            "server.global-eval='client' (the same accuracy, from the clients' replies) or 'none'"
        )
    return cfg


def _coerce(key: str, value: Any, hint: Any) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(f"{key} must be of type {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value


# Where caches live changes no result (their entries are keyed by content), so it is not
# part of a run's identity: moving a cache must not orphan the runs that used it.
CACHE_LOCATION_KEYS = ("cache.dir", "data.cache-dir")


def _run_name(cfg: AppConfig, ignore: tuple[str, ...]) -> str:
    flat = {k: v for k, v in cfg.to_flat().items() if not k.startswith(("run.", "client."))}
    for key in ("server.num-rounds", *ignore):
        flat.pop(key, None)
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()
    d, seed = cfg.core.data, cfg.core.train.seed
    return f"{d.dataset}-{cfg.core.method.name}-{d.num_clients}c-s{seed}-{digest[:6]}"


def default_run_name(cfg: AppConfig) -> str:
    """Readable and stable: re-running the same command resumes the same directory, wherever
    the caches are."""
    return _run_name(cfg, CACHE_LOCATION_KEYS)


def legacy_run_name(cfg: AppConfig) -> str:
    """The name before cache locations left the digest; the launcher still finds such runs."""
    return _run_name(cfg, ())
