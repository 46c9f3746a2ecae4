"""Sweep logic of the launcher: skip complete runs, resume interrupted ones (no Flower run)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from server_app import launch as launch_mod
from server_app.launch import CONF_DIR, app_defaults, composed_flat, launch_job, run_state
from task.federated import default_run_name, legacy_run_name, parse_app_config
from task.run_dir import RunDir, summarise

REPO = Path(__file__).resolve().parents[2]


def cfg_for(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(
            config_name="config",
            overrides=[f"run_config.run.dir={tmp_path / 'runs'}", *overrides],
        )


def write_run(runs: Path, name: str, flat: dict, rounds_done: int, finish: bool) -> Path:
    run = RunDir.open(runs, name, flat, resume=True)
    run.save_checkpoint(0, {"shared_ctx": torch.zeros(4, 8)})
    for r in range(1, rounds_done + 1):
        run.append_metrics({"round": r, "personalised_accuracy": 0.5})
        run.save_checkpoint(r, {"shared_ctx": torch.zeros(4, 8)})
    if finish:
        run.write_summary(summarise(run.read_metrics()))
    return run.root


class FakeRun:
    """Stands in for subprocess.run: records argv, returns a fixed exit code."""

    def __init__(self, rc: int = 0) -> None:
        self.rc, self.calls = rc, []

    def __call__(self, cmd, env=None, check=False):
        self.calls.append(cmd)
        return subprocess.CompletedProcess(cmd, self.rc)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    fake = FakeRun()
    monkeypatch.setattr(launch_mod.subprocess, "run", fake)
    return fake


def test_run_state(tmp_path: Path) -> None:
    flat = {"method.name": "promptfl"}
    assert run_state(tmp_path / "absent", 3) == ("new", 0)
    assert run_state(write_run(tmp_path, "done", flat, 3, True), 3) == ("complete", 3)
    assert run_state(write_run(tmp_path, "torn", flat, 2, False), 3) == ("resume", 2)
    assert run_state(write_run(tmp_path, "fresh", flat, 0, False), 3) == ("resume", 0)
    # finished with 3 rounds, now 5 are asked: the ServerApp continues it
    assert run_state(tmp_path / "done", 5) == ("resume", 3)


def test_new_then_skip_then_resume(tmp_path: Path, fake: FakeRun) -> None:
    cfg = cfg_for(tmp_path, "federation=ucmerced_40", "method=promptfl", "rounds=3", "seed=1")
    flat = composed_flat(cfg, REPO)
    name = flat["run.name"]
    assert name.startswith("ucmerced-promptfl-40c-s1-")
    # the name the app derives itself from the same config (pyproject defaults + overrides)
    merged = {**app_defaults(REPO), **{k: v for k, v in flat.items() if k != "run.name"}}
    assert default_run_name(parse_app_config(merged)) == name

    assert launch_job(cfg, tmp_path / "job0", REPO) == 0  # new
    (cmd,) = fake.calls
    assert cmd[-2:] == ["--federation-config", "num-supernodes=40 client-resources-num-cpus=1"]
    toml = tomllib.loads((tmp_path / "job0" / "run_config.toml").read_text())
    assert toml["run.name"] == name and toml["data.num-clients"] == 40

    write_run(tmp_path / "runs", name, flat, 3, finish=True)
    assert launch_job(cfg, tmp_path / "job1", REPO) == 0  # complete -> skipped
    assert len(fake.calls) == 1
    assert '"action": "complete"' in (tmp_path / "job1" / "launch.json").read_text()

    cfg5 = cfg_for(tmp_path, "federation=ucmerced_40", "method=promptfl", "rounds=5", "seed=1")
    assert composed_flat(cfg5, REPO)["run.name"] == name  # rounds do not change the name
    assert launch_job(cfg5, tmp_path / "job2", REPO) == 0  # resumed, same run.name
    assert len(fake.calls) == 2
    assert '"action": "resume"' in (tmp_path / "job2" / "launch.json").read_text()

    force = cfg_for(
        tmp_path,
        "federation=ucmerced_40",
        "method=promptfl",
        "rounds=3",
        "seed=1",
        "launch.skip_complete=false",
    )
    launch_job(force, tmp_path / "job3", REPO)
    assert len(fake.calls) == 3


def test_failure_stops_or_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(rc=3)
    monkeypatch.setattr(launch_mod.subprocess, "run", fake)
    with pytest.raises(SystemExit) as exc:
        launch_job(cfg_for(tmp_path), tmp_path / "a", REPO)
    assert exc.value.code == 3
    cfg = cfg_for(tmp_path, "launch.continue_on_error=true")
    assert launch_job(cfg, tmp_path / "b", REPO) == 3


def test_dry_run_runs_nothing(tmp_path: Path, fake: FakeRun) -> None:
    launch_job(cfg_for(tmp_path, "launch.dry_run=true"), tmp_path / "d", REPO)
    assert fake.calls == []


@pytest.mark.parametrize("group", ["federation", "method", "split", "recipe"])
def test_every_group_option_is_a_valid_run_config(group: str) -> None:
    for option in sorted(Path(CONF_DIR, group).glob("*.yaml")):
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose(config_name="config", overrides=[f"{group}={option.stem}"])
        flat = launch_mod.flatten(OmegaConf.to_container(cfg.run_config, resolve=True))
        parsed = parse_app_config(flat)
        assert int(cfg.launch.num_supernodes) == flat["data.num-clients"]
        if group == "method":
            assert flat["method.name"] == option.stem
        if group == "split" and option.stem.startswith("dirichlet"):
            assert parsed.core.data.alpha == float(option.stem.removeprefix("dirichlet"))


def test_grid_presets_cover_the_paper() -> None:
    feds = {p.stem for p in Path(CONF_DIR, "federation").glob("*.yaml")}
    for ds in ("ucmerced", "nwpu", "optimal", "aid"):
        assert {f"{ds}_{n}" for n in (10, 20, 40)} <= feds
    assert "cross_ucm_aid" in feds
    from task.methods import METHODS

    assert {p.stem for p in Path(CONF_DIR, "method").glob("*.yaml")} == set(METHODS)
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        zs = compose(config_name="config", overrides=["method=zeroshot", "rounds=7"])
        pf = compose(config_name="config", overrides=["method=promptfl", "rounds=7", "seed=2"])
    assert zs.run_config.server["num-rounds"] == 1  # no training: one evaluation round
    assert pf.run_config.server["num-rounds"] == 7 and pf.run_config.train.seed == 2


def test_cache_location_is_not_part_of_the_run_name(tmp_path: Path) -> None:
    """Moving the caches keeps the run; a run named the older way (cache paths in the digest)
    is still found and resumed instead of started again."""
    common = ("federation=ucmerced_10", "method=promptfl", "rounds=3")
    here = composed_flat(cfg_for(tmp_path, *common), REPO)
    moved = composed_flat(
        cfg_for(
            tmp_path,
            *common,
            f"run_config.cache.dir={tmp_path / 'elsewhere'}",
            f"run_config.data.cache-dir={tmp_path / 'elsewhere2'}",
        ),
        REPO,
    )
    assert moved["cache.dir"] != here["cache.dir"]
    assert moved["run.name"] == here["run.name"]
    lr = composed_flat(cfg_for(tmp_path, *common, "++run_config.train.lr=0.5"), REPO)
    assert lr["run.name"] != here["run.name"]  # what changes results still changes the name

    merged = {**app_defaults(REPO), **{k: v for k, v in here.items() if k != "run.name"}}
    legacy = legacy_run_name(parse_app_config(merged))
    assert legacy != here["run.name"]
    write_run(tmp_path / "runs", legacy, here, 2, finish=False)
    assert composed_flat(cfg_for(tmp_path, *common), REPO)["run.name"] == legacy
    # once a run exists under the current name, that one wins
    write_run(tmp_path / "runs", here["run.name"], here, 1, finish=False)
    assert composed_flat(cfg_for(tmp_path, *common), REPO)["run.name"] == here["run.name"]
