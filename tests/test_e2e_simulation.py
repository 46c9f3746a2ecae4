"""End to end: a real `flwr run .` simulation (tiny random CLIP, synthetic images, 3 x 2 rounds).

The local SuperLink that `flwr run` starts is detached; this test gives it its own FLWR_HOME and
ports and stops exactly that process group (found by its FLWR_HOME path) afterwards, also when
the run fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_CLASSES, write_synthetic_images
from tests.server_app.inprocess import tiny_run_config

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (our private FLWR_HOME)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def _stop(pids: list[int]) -> None:
    """SIGTERM each process group we started (the SuperLink leads its own), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # The detached SuperLink leads its own group (with its superexec); anything
                # else is signalled alone, never our own group.
                if os.getpgid(pid) == pid and pid != os.getpgid(0):
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)


def _toml(cfg: dict) -> str:
    lines = []
    for k, v in cfg.items():
        if isinstance(v, bool):
            val = "true" if v else "false"
        elif isinstance(v, int | float):
            val = repr(v)
        else:
            val = json.dumps(str(v))
        lines.append(f'"{k}" = {val}')
    return "\n".join(lines) + "\n"


def run_flwr(tmp: Path, cfg: dict, num_supernodes: int, timeout: float = 240) -> str:
    """`flwr run . --stream` against a SuperLink private to this test; returns the output."""
    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    cfg_file = tmp / "run-config.toml"
    cfg_file.write_text(_toml(cfg))
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        RAY_DEDUP_LOGS="0",
    )
    cmd = ["flwr", "run", ".", "--stream", "--run-config", str(cfg_file)]
    cmd += ["--federation-config", f"num-supernodes={num_supernodes}"]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    finally:
        _stop(_pids_using(str(home)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.mark.slow
def test_flwr_run_simulation_end_to_end(tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=8)
    cfg = tiny_run_config(tmp_path, tiny_clip_dir, images)
    out = run_flwr(tmp_path, cfg, num_supernodes=3)

    run = tmp_path / "runs" / "tiny"
    assert (run / "summary.json").is_file(), out[-5000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["train_loss"])
        assert 0.0 <= r["personalised_accuracy"] <= 1.0
        assert 0.0 <= r["global_accuracy"] <= 1.0
        assert r["clients_ok"] == 3 and r["clients_failed"] == 0 and r["replies_rejected"] == 0
        assert sorted(r["per_client"]) == ["0", "1", "2"]
        for c in r["per_client"].values():
            assert c["bytes_received"] > 0 and c["bytes_sent"] > 0
            assert 0.0 <= c["personalised_accuracy"] <= 1.0
        assert r["shared_payload_bytes"] == 4 * 32 * 4  # n_ctx x width x fp32 (tiny CLIP)
        assert r["round_seconds"] > 0
        # Every array key that ever reached the server: the shared prompt and nothing else.
        assert r["reply_array_keys"] == ["shared_ctx"]

    state = json.loads((run / "state.json").read_text())
    client_dirs = [tmp_path / "private" / state["experiment_id"] / f"client-{i}" for i in range(3)]
    privates = [load_file(str(d / "private-r00002.safetensors"))["private"] for d in client_dirs]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(privates[i], privates[j])

    initial = load_file(str(run / "checkpoints" / "global-r00000.safetensors"))["shared_ctx"]
    final = load_file(str(run / "checkpoints" / "global-r00002.safetensors"))["shared_ctx"]
    assert not torch.equal(initial, final)
    assert (run / "curves.png").stat().st_size > 0
    assert json.loads((run / "config.json").read_text())["data.num-clients"] == 3
