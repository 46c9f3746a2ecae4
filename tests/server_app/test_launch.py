"""Hydra launcher: presets + overrides compose into one `flwr run` call per job."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from hydra import compose, initialize_config_dir

from server_app.launch import CONF_DIR, build_command, flatten, resolve_paths
from task.federated import parse_app_config

REPO = Path(__file__).resolve().parents[2]


def test_preset_and_overrides_compose_to_a_valid_run_config(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(
            config_name="config",
            overrides=["experiment=ucmerced_promptfl", "run_config.data.num-clients=20"],
        )
    cmd = build_command(cfg, tmp_path, REPO)
    assert cmd[:3] == ["flwr", "run", str(REPO)]
    assert cmd[-2:] == ["--federation-config", "num-supernodes=20 client-resources-num-cpus=1"]
    flat = tomllib.loads((tmp_path / "run_config.toml").read_text())
    assert flat["method.name"] == "promptfl" and flat["data.num-clients"] == 20
    assert Path(flat["run.dir"]).is_absolute() and Path(flat["cache.dir"]).is_absolute()
    parse_app_config(flat)  # every composed key is a real, valid run-config key


def test_every_preset_is_valid() -> None:
    for preset in sorted(Path(CONF_DIR, "experiment").glob("*.yaml")):
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose(config_name="config", overrides=[f"experiment={preset.stem}"])
        from omegaconf import OmegaConf

        flat = flatten(OmegaConf.to_container(cfg.run_config, resolve=True))
        parse_app_config({k: v for k, v in flat.items()})


def test_resolve_paths_keeps_hub_ids_and_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    flat = {
        "model.name": "models/m",
        "data.root": "/abs/data",
        "run.dir": "runs",
        "data.cross-roots": "a=rel/a,b=/abs/b",
    }
    out = resolve_paths(flat, tmp_path)
    assert out["model.name"] == str(tmp_path / "models" / "m")
    assert out["data.root"] == "/abs/data" and out["run.dir"] == str(tmp_path / "runs")
    assert out["data.cross-roots"] == f"a={tmp_path / 'rel' / 'a'},b=/abs/b"
    assert resolve_paths({"model.name": "openai/clip-vit-base-patch16"}, tmp_path) == {
        "model.name": "openai/clip-vit-base-patch16"
    }


def test_multirun_sweep_dry_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server_app.launch",
            "-m",
            "launch.dry_run=true",
            "run_config.method.name=promptfl,fedrsclip",
            "run_config.train.seed=0,1",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cmds = [line for line in proc.stdout.splitlines() if line.startswith("flwr run")]
    assert len(cmds) == 4
    seeds = sorted(
        tomllib.loads((tmp_path / str(i) / "run_config.toml").read_text())["train.seed"]
        for i in range(4)
    )
    assert seeds == [0, 0, 1, 1]
