"""A real `flwr run .` against a SuperLink private to the caller, and the process helpers around
it: the local SuperLink that `flwr run` starts is detached, so it gets its own FLWR_HOME and ports
and exactly that process group (found by its FLWR_HOME path) is stopped afterwards, also when the
run fails."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on the loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_using(marker: str) -> list[int]:
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


def stop_processes(pids: list[int]) -> None:
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


def to_toml(cfg: dict) -> str:
    """A flat run config as the TOML that `flwr run --run-config FILE` reads."""
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
    """`flwr run . --stream` against a SuperLink private to this caller; returns the output."""
    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    cfg_file = tmp / "run-config.toml"
    cfg_file.write_text(to_toml(cfg))
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
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
        stop_processes(pids_using(str(home)))
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:  # an assertion, as in the tests that call it (also under -O)
        raise AssertionError(out[-5000:])
    return out
