"""A client fails mid-round: the round completes with the others when at least server.min-replies
valid replies came back, the failure is logged and counted, the failed client's private prompt is
its last good version (never half-written), and it rejoins the next round (issue 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server_app.phases import RoundFailedError
from task.local.private_store import PrivateStore
from tests.reliability.helpers import client_dir, experiment, rows, run, setup_run


def _versions(cfg: dict, partition: int) -> list[str]:
    """The client's private prompt versions and anything else it left there (temporaries
    included), less the personalised head's θ files (``mix-r*.json``, one per evaluation)."""
    return sorted(p.name for p in client_dir(cfg, partition).iterdir() if not _is_mix(p.name))


def _is_mix(name: str) -> bool:
    return name.startswith("mix-r") and name.endswith(".json")


@pytest.mark.slow
def test_client_crashing_mid_write_is_dropped_and_rejoins(
    tmp_path: Path, tiny_clip_dir: Path, monkeypatch, caplog
) -> None:
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 3, "server.min-replies": 2})
    # Client 1 dies in round 2 after writing its new private prompt to a temporary file, before
    # the rename: the crash a full disk or a kill would cause. Client 2 raises before training.
    monkeypatch.setenv("FEDRSCLIP_FAULT", "save:1:2,train:2:2")
    with pytest.raises(RoundFailedError, match="min-replies=2"):
        run(cfg)
    # Round 2 had one valid reply: it failed clearly and nothing of it was saved.
    assert [r["round"] for r in rows(cfg)] == [1]
    assert "round 2 failed" in caplog.text

    monkeypatch.setenv("FEDRSCLIP_FAULT", "save:1:2")
    caplog.clear()
    run(cfg)  # resumes after round 1; round 2 completes without client 1
    out = rows(cfg)
    assert [r["round"] for r in out] == [1, 2, 3]
    r2, r3 = out[1], out[2]
    assert r2["clients_ok"] == 2 and r2["clients_failed"] == 1 and r2["replies_rejected"] == 0
    assert "1" not in r2["per_client"] or "train_loss" not in r2["per_client"]["1"]
    assert "InjectedFault" in caplog.text and "failed" in caplog.text
    # Client 1 rejoined in round 3 (trained, evaluated) from its round-1 prompt.
    assert r3["clients_ok"] == 3 and r3["clients_failed"] == 0
    assert "train_loss" in r3["per_client"]["1"]
    # Its store never held a half-written file: no temporaries, every version loads and checks.
    assert _versions(cfg, 1) == ["private-r00001.safetensors", "private-r00003.safetensors"]
    store = PrivateStore(cfg["client.private-dir"], experiment(cfg), 1)
    t1, r = store.load(2)
    assert r == 1 and bool(torch.isfinite(t1).all())
    assert _versions(cfg, 0) == ["private-r00002.safetensors", "private-r00003.safetensors"]


@pytest.mark.slow
def test_missing_replies_count_as_failed(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """A node that never answers (its SuperNode is gone) is counted as failed, not ignored."""
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 1})
    cfg["run.name"] = "gone"
    from testkit.grid import InProcessGrid

    class Lossy(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            out = super().send_and_receive(messages, timeout=timeout)
            return [m for m in out if m.metadata.src_node_id != self.node_ids[0]]

    from client_app.app import app as client_app
    from server_app.loop import run_server
    from testkit.grid import task_identity

    with task_identity():
        run_server(Lossy(client_app, cfg, 3), cfg)
    (r,) = rows(cfg)
    assert r["clients_ok"] == 2 and r["clients_failed"] == 2  # train + evaluate
