"""Sweep logic of the launcher: skip complete runs, resume interrupted ones (no Flower run)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from launcher import cli as launch_mod
from launcher.cli import CONF_DIR, app_defaults, composed_flat, launch_job, run_state
from task.config import default_run_name, legacy_run_name, parse_app_config
from task.runs.run_dir import RunDir, summarise
from testkit.images import write_synthetic_images

REPO = Path(__file__).resolve().parents[2]


def cfg_for(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(
            config_name="config",
            overrides=[
                f"run_config.run.dir={tmp_path / 'runs'}",
                "launch.preflight=false",
                *overrides,
            ],
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
    """Stands in for `flwr run` (and `flwr ls`): records argv; the run ends with ``status`` on
    the SuperLink and, when ``finish`` is set, a complete run directory."""

    def __init__(
        self, rc: int = 0, status: str = "finished:completed", details: str = "", finish=True
    ) -> None:
        self.rc, self.status, self.details, self.finish = rc, status, details, finish
        self.calls: list[list[str]] = []

    def run(self, cmd, env):
        self.calls.append(cmd)
        if self.finish:  # what the ServerApp does: continue the run up to server.num-rounds
            toml = tomllib.loads(Path(cmd[cmd.index("--run-config") + 1]).read_text())
            run = RunDir.open(Path(toml["run.dir"]), toml["run.name"], toml, resume=True)
            done = run.last_completed_round()
            if done is None:
                run.save_checkpoint(0, {"shared_ctx": torch.zeros(4, 8)})
            for r in range((done or 0) + 1, toml["server.num-rounds"] + 1):
                run.append_metrics({"round": r, "personalised_accuracy": 0.5})
                run.save_checkpoint(r, {"shared_ctx": torch.zeros(4, 8)})
            run.write_summary(summarise(run.read_metrics()))
        lines = ["task.data.errors.DataError: boom"] if self.status.endswith("failed") else []
        return launch_mod.FlwrResult(self.rc, "42", lines, "last line")

    def status_of(self, cfg, run_id, env):
        return (self.status, self.details) if run_id == "42" else None


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> launch_mod.Session:
    fresh = launch_mod.Session()
    monkeypatch.setattr(launch_mod, "SESSION", fresh)
    return fresh


def use(monkeypatch: pytest.MonkeyPatch, fake: FakeRun) -> FakeRun:
    monkeypatch.setattr(launch_mod, "_run_flwr", fake.run)
    monkeypatch.setattr(launch_mod, "_run_status", fake.status_of)
    return fake


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, session) -> FakeRun:
    return use(monkeypatch, FakeRun())


def test_run_state(tmp_path: Path) -> None:
    flat = {"method.name": "promptfl"}
    assert run_state(tmp_path / "absent", 3) == ("new", 0)
    assert run_state(write_run(tmp_path, "done", flat, 3, True), 3) == ("complete", 3)
    assert run_state(write_run(tmp_path, "torn", flat, 2, False), 3) == ("resume", 2)
    assert run_state(write_run(tmp_path, "fresh", flat, 0, False), 3) == ("resume", 0)
    # finished with 3 rounds, now 5 are asked: the ServerApp continues it
    assert run_state(tmp_path / "done", 5) == ("resume", 3)


def test_new_then_skip_then_resume(tmp_path: Path, fake: FakeRun, session) -> None:
    cfg = cfg_for(tmp_path, "federation=ucmerced_40", "method=promptfl", "rounds=3", "seed=1")
    flat = composed_flat(cfg, REPO)
    name = flat["run.name"]
    assert name.startswith("ucmerced-promptfl-40c-s1-")
    # the name the app derives itself from the same config (pyproject defaults + overrides)
    merged = {**app_defaults(REPO), **{k: v for k, v in flat.items() if k != "run.name"}}
    assert default_run_name(parse_app_config(merged)) == name

    first = launch_job(cfg, tmp_path / "job0", REPO)
    assert (first.status, first.returncode, first.run) == ("complete", 0, name)
    (cmd,) = fake.calls
    assert cmd[-2:] == ["--federation-config", "num-supernodes=40 client-resources-num-cpus=1"]
    toml = tomllib.loads((tmp_path / "job0" / "run_config.toml").read_text())
    assert toml["run.name"] == name and toml["data.num-clients"] == 40

    assert launch_job(cfg, tmp_path / "job1", REPO).status == "skipped"  # complete
    assert len(fake.calls) == 1
    assert '"action": "complete"' in (tmp_path / "job1" / "launch.json").read_text()

    cfg5 = cfg_for(tmp_path, "federation=ucmerced_40", "method=promptfl", "rounds=5", "seed=1")
    assert composed_flat(cfg5, REPO)["run.name"] == name  # rounds do not change the name
    assert launch_job(cfg5, tmp_path / "job2", REPO).status == "resumed"  # same run.name
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
    assert launch_mod.finish(session) == 0


def test_flwr_exit_code_stops_the_sweep_or_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session, capsys
) -> None:
    fake = use(monkeypatch, FakeRun(rc=3, finish=False))
    out = launch_job(
        cfg_for(tmp_path, "method=promptfl"), tmp_path / "a", REPO, ["method=promptfl"]
    )
    assert (out.status, out.returncode) == ("failed", 3) and session.stopped
    rest = launch_job(cfg_for(tmp_path, "method=local"), tmp_path / "b", REPO, ["method=local"])
    assert rest.status == "not run" and len(fake.calls) == 1
    assert launch_mod.finish(session) == 3
    text = capsys.readouterr().out
    last = text.splitlines()[-2].split()
    assert "1 failed" in text and last[:3] == ["#1", "method=local", "not"]

    again = launch_mod.Session()
    cfg = cfg_for(tmp_path, "launch.continue_on_error=true")
    assert launch_job(cfg, tmp_path / "c", REPO, session=again).failed
    assert launch_job(cfg, tmp_path / "d", REPO, session=again).failed  # it still ran
    assert len(fake.calls) == 3 and not again.stopped
    assert launch_mod.finish(again) == 3  # non-zero with continue_on_error too


def test_a_run_that_failed_inside_flower_fails_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session
) -> None:
    """`flwr run --stream` exits 0 when the ServerApp raised: the SuperLink's status says so."""
    details = "Simulation failed with exception: boom"
    use(monkeypatch, FakeRun(status="finished:failed", details=details, finish=False))
    out = launch_job(cfg_for(tmp_path), tmp_path / "a", REPO)
    assert (out.status, out.returncode, out.error) == ("failed", 1, "DataError: boom")
    record = json.loads((tmp_path / "a" / "launch.json").read_text())
    assert record["status"] == "failed" and record["flwr_status"][0] == "finished:failed"


def test_a_run_that_stopped_early_fails_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session
) -> None:
    """Completed on the SuperLink but the run directory never reached server.num-rounds."""
    use(monkeypatch, FakeRun(finish=False))
    out = launch_job(cfg_for(tmp_path, "rounds=2"), tmp_path / "a", REPO)
    assert out.failed and "stopped after 0/2 rounds" in out.error
    use(monkeypatch, FakeRun(finish=True))
    again = launch_job(
        cfg_for(tmp_path, "rounds=2"), tmp_path / "b", REPO, session=launch_mod.Session()
    )
    assert again.status == "complete"


def test_preflight_failure_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session
) -> None:
    fake = use(monkeypatch, FakeRun())
    root = write_synthetic_images(tmp_path / "scenes", ["01_Grassland", "02_Farmland"], 3, size=8)
    overrides = (
        "launch.preflight=auto",
        "++run_config.data.dataset=imagefolder",
        f"++run_config.data.root={root}",
        "run_config.data.num-clients=2",
        "++run_config.data.class-names='grassland,farmland'",
    )
    overrides = (*overrides, "launch.continue_on_error=true")
    out = launch_job(cfg_for(tmp_path, *overrides), tmp_path / "a", REPO)
    assert (out.status, out.returncode) == ("failed", launch_mod.PREFLIGHT_FAILED)
    assert out.error.startswith("preflight class mapping (data.class-names): class folder(s)")
    assert fake.calls == []
    record = json.loads((tmp_path / "a" / "launch.json").read_text())
    assert [c["check"] for c in record["preflight"]] == ["data root", "class mapping"]
    # the same data in the next job: the cached result, still no flwr run
    assert launch_job(cfg_for(tmp_path, *overrides), tmp_path / "b", REPO).failed
    assert fake.calls == []


def test_dry_run_runs_nothing(tmp_path: Path, fake: FakeRun, session) -> None:
    out = launch_job(cfg_for(tmp_path, "launch.dry_run=true"), tmp_path / "d", REPO)
    assert out.status == "dry-run" and fake.calls == []


def test_summary_lines_show_swept_values() -> None:
    outcomes = [
        launch_mod.JobOutcome(0, "r0", "/w/runs/r0", "promptfl", "complete", 0, "", ["seed=0"]),
        launch_mod.JobOutcome(
            1, "r1", "/w/runs/r1", "promptfl", "failed", 1, "DataError: x. Fix: y", ["seed=1"]
        ),
    ]
    head, first, second = launch_mod.summary_lines(outcomes, Path("/w"))
    assert head == "[launch] summary of 2 job(s): 1 complete, 0 resumed, 0 skipped, 1 failed"
    assert first.split() == ["#0", "method=promptfl", "seed=0", "complete", "runs/r0"]
    assert second.split()[:5] == ["#1", "method=promptfl", "seed=1", "failed", "runs/r1"]
    assert second.endswith("DataError: x")


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


def test_a_job_that_cannot_start_is_a_failed_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session
) -> None:
    def no_flwr(cmd, env):
        raise FileNotFoundError("[Errno 2] No such file or directory: 'flwr'")

    monkeypatch.setattr(launch_mod, "_run_flwr", no_flwr)
    out = launch_job(cfg_for(tmp_path), tmp_path / "a", REPO)
    assert (out.status, out.returncode) == ("failed", 1) and "'flwr'" in out.error
    bad = launch_job(cfg_for(tmp_path, "++run_config.train.lr=-1"), tmp_path / "b", REPO)
    assert bad.status == "not run"  # the first failure stopped the sweep
    fresh = launch_mod.Session()
    bad = launch_job(
        cfg_for(tmp_path, "++run_config.train.lr=-1"), tmp_path / "c", REPO, session=fresh
    )
    assert (bad.returncode, bad.error) == (2, "train.lr must be in (0, 10], got -1.0")
