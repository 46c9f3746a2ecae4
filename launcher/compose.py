"""Composing one launcher job: Hydra's ``run_config`` flattened to Flower's keys, local paths
made absolute, ``run.name`` fixed, the run directory's state (new / resume / complete) and the
`flwr run` argv with its run-config TOML."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from task.config import (
    PATH_KEYS,
    ConfigError,
    default_run_name,
    legacy_run_name,
    parse_app_config,
)


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


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """The app's run-config defaults ([tool.flwr.app.config] of its pyproject.toml)."""
    path = app_dir / "pyproject.toml"
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    return dict(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def composed_flat(cfg: DictConfig, base: Path) -> dict[str, Any]:
    """run_config flattened, paths made absolute, and ``run.name`` fixed (derived if empty)."""
    flat = flatten(OmegaConf.to_container(cfg.run_config, resolve=True))
    if cfg.launch.resolve_paths:
        flat = resolve_paths(flat, base)
    if not flat.get("run.name"):
        merged = {**app_defaults((base / cfg.launch.app).resolve()), **flat}
        try:
            parsed = parse_app_config(merged)
        except ConfigError:  # pyproject.toml and task/config.py out of step: let the app say so
            parsed = parse_app_config(flat)
        flat["run.name"] = default_run_name(parsed)
        runs_dir = Path(str(merged.get("run.dir") or "runs"))
        runs_dir = runs_dir if runs_dir.is_absolute() else base / runs_dir
        legacy = legacy_run_name(parsed)
        if not (runs_dir / flat["run.name"]).exists() and (runs_dir / legacy).exists():
            flat["run.name"] = legacy  # started before cache locations left the name
    return flat


def run_state(run_root: Path, num_rounds: int) -> tuple[str, int]:
    """("complete" | "resume" | "new", last round recorded) for the run directory ``run_root``.

    Complete: summary.json exists and its final_round reaches ``num_rounds``. Resume: the
    directory holds a started run (state.json or metrics) that is not complete. New: otherwise.
    """
    summary = run_root / "summary.json"
    done = 0
    if summary.is_file():
        try:
            done = int(json.loads(summary.read_text()).get("final_round") or 0)
        except (ValueError, json.JSONDecodeError):
            done = 0
        if done >= num_rounds:
            return "complete", done
    metrics = run_root / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                done = max(done, int(json.loads(line)["round"]))
            except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                break
    if done or (run_root / "state.json").is_file():
        return "resume", done
    return "new", 0


def plan(cfg: DictConfig, flat: Mapping[str, Any], base: Path) -> tuple[str, Path, int, int]:
    """(action, run directory, rounds done, rounds asked) for one composed job."""
    defaults = app_defaults((base / cfg.launch.app).resolve())
    run_dir = Path(str(flat.get("run.dir", defaults.get("run.dir", "runs"))))
    if not run_dir.is_absolute():
        run_dir = base / run_dir
    rounds = int(flat.get("server.num-rounds", defaults.get("server.num-rounds", 1)))
    root = run_dir / str(flat["run.name"])
    action, done = run_state(root, rounds)
    if action == "complete" and not cfg.launch.skip_complete:
        action = "resume"
    return action, root, done, rounds


def build_command(
    cfg: DictConfig, out_dir: Path, base: Path, flat: Mapping[str, Any] | None = None
) -> list[str]:
    """The `flwr run` argv for one composed config; writes the run-config TOML to out_dir."""
    if flat is None:
        flat = composed_flat(cfg, base)
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
        # One CPU per virtual client: Flower's default (2) runs one Ray actor on a 2-core machine;
        # two 1-thread actors finish a stand-in round ~1.4x sooner (docs/performance.md).
        fed = f"num-supernodes={int(cfg.launch.num_supernodes)}"
        cpus = cfg.launch.get("client_cpus")
        if cpus:
            fed += f" client-resources-num-cpus={float(cpus):g}"
        cmd += ["--federation-config", fed]
    return cmd
