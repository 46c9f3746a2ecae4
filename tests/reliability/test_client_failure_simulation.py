"""Client failure in a real `flwr run` simulation (Ray actors, real Flower messages): a ClientApp
that raises mid-round is dropped from that round, counted, and rejoins the next (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.flwr_run import run_flwr
from tests.reliability.helpers import client_dir, rows, setup_run


@pytest.mark.slow
def test_flwr_simulation_client_crash_mid_round(
    tmp_path: Path, tiny_clip_dir: Path, monkeypatch
) -> None:
    cfg = setup_run(
        tmp_path,
        tiny_clip_dir,
        **{"server.num-rounds": 2, "server.min-replies": 2, "server.eval-every": 2},
    )
    # Inherited by the SuperLink `flwr run` starts, its simulation process and the Ray actors.
    monkeypatch.setenv("FEDRSCLIP_FAULT", "save:0:1")
    out = run_flwr(tmp_path, cfg, num_supernodes=3)
    r1, r2 = rows(cfg)
    assert r1["clients_ok"] == 2 and r1["clients_failed"] == 1, out[-4000:]
    assert r2["clients_ok"] == 3 and r2["clients_failed"] == 0  # rejoined
    assert sorted(r2["per_client"]) == ["0", "1", "2"]
    assert "train_loss" in r2["per_client"]["0"]
    assert "InjectedFault" in out
    # Client 0's round-1 write never landed (no temporaries either); round 2 is its first version.
    # (Besides θ files of the personalised head, mix-r*.json, written at each evaluation.)
    kept = sorted(p.name for p in client_dir(cfg, 0).iterdir() if not p.name.startswith("mix-r"))
    assert kept == ["private-r00002.safetensors"]
    summary = json.loads((Path(cfg["run.dir"]) / cfg["run.name"] / "summary.json").read_text())
    assert summary["clients_failed"] == 1
