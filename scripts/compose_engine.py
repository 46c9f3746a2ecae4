"""The container engine under the compose demo: podman + podman-compose, or Docker Compose.

Kept apart from the image building (compose_images.py) and the demo (compose_demo.py), which both
drive an ``Engine``. Podman needs no daemon; on these machines it needs the containers.conf
written by ``podman_env`` (ulimits, runc, cgroupfs; see ../shared/notes/containers.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("FEDRSCLIP_COMPOSE_CACHE", Path.home() / ".cache/fedrsclip-compose"))
LABEL = "fedrsclip.inputs"  # an image's build inputs (a digest): rebuilt when they change
APT_PACKAGES = [
    "podman", "runc", "crun", "uidmap", "slirp4netns", "passt", "fuse-overlayfs", "debootstrap",
    "containernetworking-plugins", "netavark", "aardvark-dns", "catatonit", "conmon", "iptables",
]  # fmt: skip
# Debian's podman-compose 1.0.3 appends an overlay's `command:` to the base file's instead of
# replacing it (compose.tls.yml would keep --insecure); 1.1+ merges like Docker Compose.
PODMAN_COMPOSE = "podman-compose==1.5.0"
CONTAINERS_CONF = """\
# Written by scripts/compose_images.py (see ../shared/notes/containers.md).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"

[network]
network_backend = "netavark"
"""


@dataclass
class Engine:
    """A container CLI and its compose front end, with the environment both need."""

    name: str  # "podman" or "docker"
    compose_cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, *args: str, check: bool = True, timeout: float | None = 600, quiet: bool = True
    ) -> subprocess.CompletedProcess:
        return run([self.name, *args], env=self.env, check=check, timeout=timeout, quiet=quiet)

    def compose(
        self, project_dir: Path, project: str, files: Sequence[str], *args: str, **kw: object
    ) -> subprocess.CompletedProcess:
        """``<compose> -p project -f ... <args>`` run in ``project_dir`` (its .env applies)."""
        cmd = [*self.compose_cmd, "-p", project]
        if self.name == "podman":
            cmd += ["--in-pod", "false"]  # one network namespace per container, as in Docker
        for f in files:
            cmd += ["-f", str(project_dir / f)]
        return run([*cmd, *args], env=self.env, cwd=project_dir, **kw)  # type: ignore[arg-type]

    def image_label(self, image: str, label: str = LABEL) -> str | None:
        """The image's label value; None when the image does not exist."""
        res = self("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False)
        if res.returncode != 0:
            return None
        return (json.loads(res.stdout or "null") or {}).get(label, "")


def run(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float | None = 600,
    quiet: bool = True,
) -> subprocess.CompletedProcess:
    """A bounded subprocess; output captured (quiet) or streamed; errors carry the output."""
    full_env = {**os.environ, **(env or {})}
    if not quiet:
        print("$", " ".join(argv), flush=True)
    res = subprocess.run(
        list(argv),
        env=full_env,
        cwd=cwd,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        tail = (res.stdout or "")[-4000:]
        raise RuntimeError(f"{' '.join(argv)} exited with {res.returncode}\n{tail}")
    return res


def podman_env(cache: Path = CACHE) -> dict[str, str]:
    """CONTAINERS_CONF for podman where the system has none (these machines need one)."""
    if os.environ.get("CONTAINERS_CONF") or Path("/etc/containers/containers.conf").exists():
        return {}
    cache.mkdir(parents=True, exist_ok=True)
    conf = cache / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {"CONTAINERS_CONF": str(conf)}


def _podman_compose_cmd() -> list[str] | None:
    """podman-compose >= 1.1 (this Python's module first, then PATH), else None."""
    for cmd in ([sys.executable, "-m", "podman_compose"], ["podman-compose"]):
        if cmd[0] == "podman-compose" and shutil.which(cmd[0]) is None:
            continue
        res = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
        found = re.search(r"podman-compose version:?\s*(\d+)\.(\d+)", res.stdout + res.stderr)
        if res.returncode == 0 and found and (int(found[1]), int(found[2])) >= (1, 1):
            return cmd
    return None


def detect_engine(prefer: str = "auto") -> Engine | None:
    """podman + podman-compose when installed (auto prefers it), else a reachable Docker."""
    if prefer in ("auto", "podman") and shutil.which("podman"):
        cmd = _podman_compose_cmd()
        if cmd is not None:
            return Engine("podman", cmd, podman_env())
    if prefer in ("auto", "docker") and shutil.which("docker"):
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
        comp = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if info.returncode == 0 and comp.returncode == 0:
            return Engine("docker", ["docker", "compose"])
    return None


def missing_tools() -> list[str]:
    """What the podman route still lacks (empty: ready)."""
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if _podman_compose_cmd() is None:
        missing.append(PODMAN_COMPOSE)
    return missing


def install() -> None:
    """apt-get the podman stack and debootstrap (as root), pip-install podman-compose."""
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        if os.geteuid() != 0:
            raise PermissionError("installing the podman stack needs root (apt-get)")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update"], env=env, timeout=900)
        run(["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES], env=env)
    if _podman_compose_cmd() is None:
        run([sys.executable, "-m", "pip", "install", "--quiet", PODMAN_COMPOSE])
