"""End to end: the launcher around a real `flwr run` whose ServerApp fails. `flwr run --stream`
exits 0 then; the launcher must still exit non-zero and name the error (issue #19)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.flwr_run import pids_using, private_flwr_env, stop_processes
from testkit.images import write_synthetic_images

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_failed_flower_run_fails_the_launcher(tmp_path: Path, tiny_clip_dir: Path) -> None:
    root = write_synthetic_images(tmp_path / "scenes", ["01_River", "02_Beach"], per_class=4)
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = private_flwr_env(home)
    cmd = [
        sys.executable,
        "-m",
        "launcher",
        "method=zeroshot",
        "launch.preflight=false",  # let the ServerApp's own preflight fail inside Flower
        f"run_config.model.name={tiny_clip_dir}",
        "run_config.data.num-clients=2",
        "++run_config.data.dataset=imagefolder",
        f"++run_config.data.root={root}",
        "++run_config.data.class-names='river,beach'",
        f"run_config.run.dir={tmp_path / 'runs'}",
        f"run_config.cache.dir={tmp_path / 'features'}",
        f"run_config.client.private-dir={tmp_path / 'private'}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    finally:
        stop_processes(pids_using(str(home)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-5000:]
    record = json.loads((tmp_path / "out" / "launch.json").read_text())
    assert record["flwr_returncode"] == 0  # Flower itself reports success ...
    assert record["flwr_status"][0] == "finished:failed"  # ... but the run failed
    assert record["status"] == "failed"
    assert record["error"].startswith("DataError: class folder(s) ['01_River', '02_Beach']")
    summary = out[out.index("[launch] summary") :]
    assert "1 failed" in summary and "DataError: class folder(s)" in summary
