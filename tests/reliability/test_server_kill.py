"""Server interruption: the ServerApp process is SIGKILLed mid-run, restarted, resumes from the
last completed round, and ends with exactly the metrics, global prompt and private prompts of an
uninterrupted run with the same seed (issue 8)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.reliability.helpers import client_dir, rows, run, setup_run

REPO = Path(__file__).resolve().parents[2]
COMPARED = ("round", "train_loss", "personalised_accuracy", "global_accuracy", "personalised_loss")


def _start(cfg: dict, tmp: Path, delay: float) -> subprocess.Popen:
    path = tmp / f"{cfg['run.name']}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    log = open(tmp / f"{cfg['run.name']}.log", "ab")  # noqa: SIM115 (closed by the child's exit)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.server_proc", str(path), str(delay)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkilled_server_resumes_to_identical_results(tmp_path: Path, tiny_clip_dir: Path) -> None:
    base = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 3})
    ref = {**base, "run.name": "straight"}
    run(ref)

    cfg = {**base, "run.name": "killed"}
    metrics = Path(cfg["run.dir"]) / "killed" / "metrics.jsonl"
    proc = _start(cfg, tmp_path, delay=0.15)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and metrics.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        # Into round 2: wait until a client has saved its round-2 private prompt (the state the
        # kill must find), instead of sleeping a guess.
        private = Path(cfg["client.private-dir"])
        while time.monotonic() < deadline and not any(private.rglob("private-r00002.*")):
            time.sleep(0.01)
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        _kill(proc)
    done = [r["round"] for r in rows(cfg)]
    assert done and done[-1] < 3, done

    proc = _start(cfg, tmp_path, delay=0.0)
    try:
        assert proc.wait(timeout=120) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    finally:
        _kill(proc)
    log = (tmp_path / "killed.log").read_text()
    assert f"resuming after round {done[-1]}" in log

    got, want = rows(cfg), rows(ref)
    assert [[r[k] for k in COMPARED] for r in got] == [[r[k] for k in COMPARED] for r in want]
    name = "checkpoints/global-r00003.safetensors"
    a = load_file(str(Path(ref["run.dir"]) / "straight" / name))["shared_ctx"]
    b = load_file(str(Path(cfg["run.dir"]) / "killed" / name))["shared_ctx"]
    assert torch.equal(a, b)
    for c in range(3):
        pa = load_file(str(client_dir(ref, c) / "private-r00003.safetensors"))["private"]
        pb = load_file(str(client_dir(cfg, c) / "private-r00003.safetensors"))["private"]
        assert torch.equal(pa, pb)
