"""Hydra launcher: presets + overrides compose into one `flwr run` call per job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from hydra import compose, initialize_config_dir

from launcher.cli import CONF_DIR, build_command, flatten, resolve_paths
from task.config import parse_app_config
from testkit.images import write_synthetic_images

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
            "launcher",
            "-m",
            "launch.dry_run=true",
            "launch.preflight=false",
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


FAKE_FLWR = """#!{python}
# Stands in for the `flwr` CLI: logs its argv; `flwr run` "starts" run 42 and exits 0 although
# the run fails (as Flower's does), `flwr ls` reports the failure.
import json, os, sys
with open(os.environ["FAKE_FLWR_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "run":
    print("Successfully started run 42")
    print("Traceback (most recent call last):")
    print("task.data.errors.DataError: no images for this test. Fix: data.root")
elif sys.argv[1] == "ls":
    details = "Simulation failed with exception: no images for this test. Fix: data.root"
    runs = [{{"run-id": "42", "status": "finished:failed", "status-details": details}}]
    print(json.dumps({{"success": True, "runs": runs}}))
"""


def fake_flwr_env(tmp_path: Path) -> dict[str, str]:
    """PATH with a fake `flwr` first (it logs every call to FAKE_FLWR_LOG)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "flwr"
    script.write_text(FAKE_FLWR.format(python=sys.executable))
    script.chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_FLWR_LOG=str(tmp_path / "flwr-calls.log"))
    return env


def flwr_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "flwr-calls.log"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def launch(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launcher", *args]
    cmd += [f"run_config.run.dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    cmd += [f"hydra.run.dir={tmp_path / 'out'}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_sweep_of_failing_runs_exits_non_zero(tmp_path: Path) -> None:
    """Two jobs whose runs fail inside Flower (flwr run exits 0): both run with
    continue_on_error, the summary lists both as failed, and the sweep exits non-zero."""
    env = fake_flwr_env(tmp_path)
    common = ("launch.preflight=false", "rounds=2")
    proc = launch(
        tmp_path, env, "-m", "method=promptfl,local", *common, "launch.continue_on_error=true"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert [c[0] for c in flwr_calls(tmp_path)] == ["run", "ls", "run", "ls"]
    summary = proc.stdout[proc.stdout.index("[launch] summary") :].splitlines()
    assert summary[0] == "[launch] summary of 2 job(s): 0 complete, 0 resumed, 0 skipped, 2 failed"
    for line, method in zip(summary[1:3], ("promptfl", "local"), strict=True):
        assert line.split()[1:3] == [f"method={method}", "failed"]
        assert f"runs/ucmerced-{method}-10c-s0-" in line
        assert line.endswith("DataError: no images for this test")
    record = json.loads((tmp_path / "sweep" / "1" / "launch.json").read_text())
    assert record["status"] == "failed" and record["returncode"] == 1

    # without continue_on_error the second job is not run; still non-zero
    (tmp_path / "flwr-calls.log").unlink()
    proc = launch(tmp_path, env, "-m", "method=promptfl,local", *common)
    assert proc.returncode == 1 and [c[0] for c in flwr_calls(tmp_path)] == ["run", "ls"]
    assert "1 failed, 1 not run" in proc.stdout

    # a single run: the same rule
    (tmp_path / "flwr-calls.log").unlink()
    proc = launch(tmp_path, env, "method=promptfl", *common)
    assert proc.returncode == 1 and "1 failed" in proc.stdout


def test_preflight_failure_exits_fast_without_starting_a_simulation(tmp_path: Path) -> None:
    """The issue's sweep with folders like 01_Grassland and plain class names: every job fails
    in the preflight, in seconds, naming data.class-names; `flwr` is never called."""
    env = fake_flwr_env(tmp_path)
    folders = ["01_Grassland", "02_Farmland", "03_Industrial", "04_RiverLake"]
    root = write_synthetic_images(tmp_path / "scenes", folders, per_class=3, size=8)
    proc = launch(
        tmp_path,
        env,
        "-m",
        "method=zeroshot,promptfl,local,fedrsclip",
        "recipe=standin",
        "rounds=5",
        "run_config.data.num-clients=2",
        "++run_config.data.dataset=imagefolder",
        f"++run_config.data.root={root}",
        "++run_config.data.class-names='grassland,farmland,industrial,river lake'",
        "launch.continue_on_error=true",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    # The property, not a time: the job stopped at the preflight, before any simulation.
    assert flwr_calls(tmp_path) == []  # no simulation was started
    assert "key to fix: data.class-names" in out
    assert "data.class-names='01_Grassland=grassland,02_Farmland=farmland," in out
    assert "0 complete, 0 resumed, 0 skipped, 4 failed" in out
