"""A SuperNode SIGKILLed mid-training on the Deployment Engine, then restarted (issue 8).

SuperLink + 3 SuperNodes on loopback (scripts/deploy_local.py, no TLS/auth: those are covered by
test_deploy_local.py), tiny random CLIP, synthetic images, 3 rounds, ``server.min-replies=2``.
Partition 1's ClientApp hangs in round 2 (fault stage ``hang``: it writes a marker file, then
sleeps); the test then SIGKILLs that SuperNode's whole process group (SuperNode, its SuperExec and
the ClientApp) and restarts it at once with the same partition and private-dir.

What Flower 1.41 does with the dead node: nothing answers its round-2 message, and the SuperLink
keeps it "online" until ``online_until`` = its last heartbeat + HEARTBEAT_PATIENCE (2) x 30 s has
passed (heartbeats go out every 17.5-22.5 s, so 37.5-60 s after the kill). From then on a pull of
the replies gets a NODE_UNAVAILABLE error from the SuperLink in place of the node's reply, which
ends the round's wait (``server.timeout`` is set above that here, as it is in production). The
restarted SuperNode registers afresh (no auth: a new key, a new node id) and trains in round 3.

Every process is started in its own process group by the deployment and stopped by it (context
manager), also when an assertion fails; afterwards the test checks that no process carrying this
test's FLWR_HOME is left (that also covers the SuperLink's detached SuperExec and ServerApp).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from task.local.private_store import PrivateStore
from testkit.flwr_run import to_toml
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config
from tests.deploy import REPO, load_script

dl = load_script("deploy_local")

VICTIM = 1  # partition whose SuperNode is killed in round 2
REPLY_TIMEOUT = 120.0  # server.timeout: above the SuperLink's <= 60 s offline detection
RUN_DEADLINE = 420.0  # the whole `flwr run`, generous for a loaded 2-core machine


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else f"({path} missing)"


def _wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None) -> float:
    """Poll until ``predicate()``; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        if proc is not None and proc.poll() is not None:
            tail = _tail(log) if log else ""
            raise AssertionError(f"`flwr run` ended ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.2)
    tail = _tail(log) if log else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _store_files(store_dir: Path) -> dict[str, str]:
    """name -> sha256 of the file bytes, every entry (temporaries included)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store_dir.iterdir())}


def _procs_with_env(key: str, value: str) -> list[int]:
    """Processes whose environment has key=value (each process this test caused has it)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat[stat.rindex(")") + 2] != "Z":
                    found.append(int(entry.name))
    return found


def _kill_leftovers(flwr_home: Path) -> list[int]:
    """SIGKILL any process still carrying this deployment's FLWR_HOME; returns their pids."""
    left = _procs_with_env("FLWR_HOME", str(flwr_home))
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.slow
def test_supernode_sigkill_mid_training_and_rejoin(tmp_path: Path, tiny_clip_dir: Path) -> None:
    t_start = time.monotonic()
    images = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=8)
    cfg = tiny_run_config(tmp_path, tiny_clip_dir, images)
    cfg.update(
        {
            "cache.dir": ".cache/features",  # per node (each ClientApp's cwd)
            "server.num-rounds": 3,
            "server.min-replies": 2,
            "server.eval-every": 3,  # evaluate once, after round 3 (the last)
            "server.timeout": REPLY_TIMEOUT,
        }
    )
    run_config = tmp_path / "run-config.toml"
    run_config.write_text(to_toml(cfg))
    run_dir = tmp_path / "runs" / "tiny"
    markers = tmp_path / "markers"
    markers.mkdir()
    marker = markers / f"hang-p{VICTIM}-r2"

    dep = dl.LocalDeployment(
        tmp_path / "deploy",
        num_nodes=3,
        tls=False,
        auth=False,
        env_extra={"FEDRSCLIP_FAULT": f"hang:{VICTIM}:2", "FEDRSCLIP_FAULT_MARKER": str(markers)},
    )
    run_log = dep.logs / "flwr-run.log"
    timings: dict[str, float] = {}
    try:
        with dep:
            dep.up()
            t_up = time.monotonic()
            argv = ["flwr", "run", str(REPO), dl.CONNECTION, "--stream"]
            run_proc = dep._spawn([*argv, "--run-config", str(run_config)], REPO, run_log)
            victim = dep.nodes[VICTIM]

            # Round 2: the victim's ClientApp is stuck in training.
            t_marker = _wait_for(marker.is_file, 240, "the round-2 hang marker", run_proc, run_log)
            rows = _metrics(run_dir)
            assert [r["round"] for r in rows] == [1], rows
            assert rows[0]["clients_ok"] == 3 and rows[0]["clients_failed"] == 0
            experiment = json.loads((run_dir / "state.json").read_text())["experiment_id"]
            store_dir = victim.private_dir / experiment / f"client-{VICTIM}"
            before = _store_files(store_dir)
            assert list(before) == ["private-r00001.safetensors"], before

            # SIGKILL the SuperNode's whole process group (SuperNode, SuperExec, ClientApp).
            app_pid = int(marker.read_text())
            assert os.getpgid(app_pid) == victim.proc.pid, "the ClientApp is in the node's group"
            os.killpg(victim.proc.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            _wait_for(lambda: not dl.group_alive(victim.proc.pid), 10, "the group to die")
            victim.proc.wait(timeout=5)

            # Nothing half-written: the store holds round 1's file, byte for byte, and it loads.
            assert _store_files(store_dir) == before
            tensor, loaded_round = PrivateStore(victim.private_dir, experiment, VICTIM).load(2)
            assert loaded_round == 1 and tensor.numel() > 0

            # Restart it at once: same partition, private-dir and working directory.
            victim.port = dl.free_port()
            victim.proc = dep._spawn(dep.supernode_argv(victim), victim.dir, victim.log)

            t_round2 = _wait_for(
                lambda: len(_metrics(run_dir)) >= 2,
                REPLY_TIMEOUT + 30,
                "round 2 to end",
                run_proc,
                run_log,
            )
            run_proc.wait(timeout=max(1.0, RUN_DEADLINE - (time.monotonic() - t_up)))
            t_end = time.monotonic()
            out = _tail(run_log, 200_000)
            assert run_proc.returncode == 0, out[-6000:]
            timings = {
                "startup_s": t_up - t_start,
                "to_marker_s": t_marker - t_up,
                "kill_to_round2_end_s": t_round2 - t_kill,
                "round2_end_to_run_end_s": t_end - t_round2,
                "total_s": t_end - t_start,
            }
            pids = [p.pid for p in dep.procs]
    finally:
        leftovers = _kill_leftovers(dep.flwr_home)
    print(f"\nsupernode-kill timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    assert not [pid for pid in pids if dl.group_alive(pid)], "process groups left running"
    assert not leftovers, f"processes left running after the test: {leftovers}"

    r1, r2, r3 = _metrics(run_dir)
    # Round 2 aggregated the two remaining clients; the dead node is logged and counted once.
    assert r2["clients_ok"] == 2 and r2["clients_failed"] == 1 and r2["replies_rejected"] == 0
    assert sorted(k for k in r2["per_client"] if int(k) >= 0) == ["0", "2"], r2["per_client"]
    assert r2["train_loss"] is not None
    assert "no reply from node(s)" in out and "(counted as failed)" in out
    # Ended by the SuperLink's offline detection (a NODE_UNAVAILABLE error), not the timeout.
    assert "the SuperLink answered for it" in out and "Node Unavailable" in out, out[-6000:]
    # The restarted node rejoined: its round-3 reply was averaged and it evaluated.
    assert r3["clients_ok"] == 3 and r3["clients_failed"] == 0
    assert sorted(r3["per_client"]) == ["0", "1", "2"]
    assert (
        "train_loss" in r3["per_client"]["1"] and "personalised_accuracy" in r3["per_client"]["1"]
    )
    assert (run_dir / "summary.json").is_file()
    # Its store: round 1's file untouched (round 3 trained from it), round 3's new one, no temp.
    after = _store_files(store_dir)
    expected = ["mix-r00003.json", "private-r00001.safetensors", "private-r00003.safetensors"]
    assert sorted(after) == expected, after  # (mix: the personalised head's θ, round 3's eval)
    assert after["private-r00001.safetensors"] == before["private-r00001.safetensors"]
    assert PrivateStore(victim.private_dir, experiment, VICTIM).load(3)[1] == 3
    assert timings["kill_to_round2_end_s"] < 75, timings
