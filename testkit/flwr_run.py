"""A real `flwr run .` against a SuperLink private to the caller, and the process helpers around
it: the local SuperLink that `flwr run` starts is detached, so it gets its own FLWR_HOME and ports
and exactly that process group (found by its FLWR_HOME path) is stopped afterwards, also when the
run fails."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from launcher.compose import to_toml  # the launcher's writer: one TOML format

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


def private_flwr_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment for `flwr` with its own FLWR_HOME (``home``) and free ports
    for the local SuperLink it starts, no per-run dependency installation, Hugging Face
    offline; ``extra`` on top."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        **extra,
    )
    return env


def run_flwr(tmp: Path, cfg: dict, num_supernodes: int, timeout: float = 240) -> str:
    """`flwr run . --stream` against a SuperLink private to this caller; returns the output."""
    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    cfg_file = tmp / "run-config.toml"
    cfg_file.write_text(to_toml(cfg))
    env = private_flwr_env(home, RAY_DEDUP_LOGS="0")
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
