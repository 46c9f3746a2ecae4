"""Hydra launcher: compose a preset from conf/ with overrides into one `flwr run` call.

Flower starts the ServerApp and ClientApps itself, so Hydra does not wrap the apps; it only
composes configs and sweeps. Each (multirun) job flattens ``run_config`` to Flower's
``section.key`` form, writes it as a TOML file next to Hydra's outputs and runs::

    flwr run <app> [<connection>] --stream --run-config <file> \\
        --federation-config "num-supernodes=<data.num-clients>"

Examples::

    python -m server_app.launch experiment=ucmerced_promptfl run_config.server.num-rounds=5
    python -m server_app.launch -m run_config.method.name=promptfl,fedrsclip \\
        run_config.data.num-clients=10,20 run_config.train.seed=0,1,2
    python -m server_app.launch launch.dry_run=true      # print the command only
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# Keys holding a local path; made absolute because the SuperLink may run in another directory.
PATH_KEYS = ("data.root", "data.cache-dir", "cache.dir", "run.dir", "client.private-dir")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"data": {"root": x}} -> {"data.root": x} (Flower's run-config keys)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resolve_paths(flat: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative local paths (and model dirs that exist locally) -> absolute paths."""
    out = dict(flat)

    def absolute(value: str) -> str:
        return value if not value or Path(value).is_absolute() else str((base / value).resolve())

    for key in PATH_KEYS:
        if isinstance(out.get(key), str):
            out[key] = absolute(out[key])
    model = out.get("model.name")
    if isinstance(model, str) and (base / model).is_dir():
        out["model.name"] = str((base / model).resolve())
    roots = out.get("data.cross-roots")
    if isinstance(roots, str) and roots:
        pairs = [p.split("=", 1) for p in roots.split(",") if p.strip()]
        out["data.cross-roots"] = ",".join(f"{k.strip()}={absolute(v.strip())}" for k, v in pairs)
    return out


def to_toml(flat: Mapping[str, Any]) -> str:
    """A run-config override file (quoted dotted keys; scalars only, as Flower requires)."""
    lines = []
    for key, value in sorted(flat.items()):
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str):
            text = json.dumps(value)
        else:
            raise ValueError(f"run_config.{key}: Flower run config takes scalars, got {value!r}")
        lines.append(f"{json.dumps(key)} = {text}")
    return "\n".join(lines) + "\n"


def build_command(cfg: DictConfig, out_dir: Path, base: Path) -> list[str]:
    """The `flwr run` argv for one composed config; writes the run-config TOML to out_dir."""
    flat = flatten(OmegaConf.to_container(cfg.run_config, resolve=True))
    if cfg.launch.resolve_paths:
        flat = resolve_paths(flat, base)
    out_dir.mkdir(parents=True, exist_ok=True)
    toml_path = out_dir / "run_config.toml"
    toml_path.write_text(to_toml(flat))
    cmd = ["flwr", "run", str((base / cfg.launch.app).resolve())]
    if cfg.launch.connection:
        cmd.append(str(cfg.launch.connection))
    if cfg.launch.stream:
        cmd.append("--stream")
    cmd += ["--run-config", str(toml_path)]
    if not cfg.launch.connection:  # simulation: the federation size follows the data split
        cmd += ["--federation-config", f"num-supernodes={int(cfg.launch.num_supernodes)}"]
    return cmd


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Compose, then run (or print) one `flwr run` call per Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    cmd = build_command(cfg, out_dir, Path(hydra.utils.get_original_cwd()))
    print(shlex.join(cmd), flush=True)
    if cfg.launch.dry_run:
        return
    env = dict(os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc != 0:
        sys.exit(rc)


if __name__ == "__main__":
    main()
