"""One compose project of the demo, from its project folder to ``down``: ``ComposeDemo``.

Prepares the workdir (compose files, .env, per-node image folders, keys, certificates, flwr
connection), brings the stack up with the node keys registered, starts an unregistered SuperNode,
runs ``flwr run``, gathers the facts compose_checks.py judges, and takes everything down. The
order of those steps and the report are compose_demo.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Its sibling modules and the repository's packages, also when this file is loaded by path
# (tests) rather than run.
for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import compose_checks as checks  # noqa: E402
import compose_images as images  # noqa: E402
import deploy_local as dl  # noqa: E402
import gen_compose as gen  # noqa: E402
from compose_engine import Engine  # noqa: E402
from compose_project import (  # noqa: E402
    container_run_config,
    make_readable,
    readable_by_all,
    write_env,
)

from launcher.compose import to_toml  # noqa: E402

REPO = images.REPO
FILES = ("compose.yml", "compose.tls.yml", "compose.auth.yml")
CONNECTION = "compose"
APP_UID = 49999  # the user of Flower's images
LINK = "No SuperNode found with the given public key"
REMOVE = {
    "containers": ["rm", "-f"],
    "pods": ["pod", "rm", "-f"],
    "networks": ["network", "rm"],
    "volumes": ["volume", "rm", "-f"],
}


@dataclass
class ComposeDemo:
    """One compose project in ``workdir``; ``down()`` removes every container, network, volume."""

    engine: Engine
    workdir: Path
    project: str
    nodes: int = 3
    app_tag: str = images.AppBuild.tag
    port: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def project_dir(self) -> Path:
        return self.workdir / "compose"

    @property
    def certs(self) -> Path:
        return self.workdir / "certs"

    @property
    def keys(self) -> Path:
        return self.workdir / "keys"

    def node_images(self, i: int) -> Path:
        return self.workdir / "nodes" / f"node-{i}" / "images"

    def compose(
        self, *args: str, files: Sequence[str] = FILES, **kw: Any
    ) -> subprocess.CompletedProcess:
        """The engine's compose on this project's folder and files (TLS and auth by default)."""
        kw.setdefault("timeout", 600)
        return self.engine.compose(self.project_dir, self.project, files, *args, **kw)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Seconds of ``step`` into ``self.seconds``, also when it fails (for the report)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[step] = round(time.monotonic() - t0, 1)

    # -- preparation ----------------------------------------------------------------------------
    def prepare(self, model: Path, image_root: Path, run_config: Mapping[str, Any]) -> Path:
        """Project folder, per-node image folders, model, keys, certificates, flwr connection;
        returns the run config file for ``flwr run``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or dl.free_port()
        for name, text in gen.render(self.nodes).items():
            (self.project_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.project_dir / name).write_text(text)
        local = self._split_images(image_root, run_config)
        if not readable_by_all(model):  # the containers' user is another UID
            shutil.copytree(model, self.workdir / "model", dirs_exist_ok=True)
            model = self.workdir / "model"
            make_readable(model)
        env = {
            "COMPOSE_PROJECT_NAME": self.project,
            "APP_TAG": self.app_tag.split(":", 1)[1],
            "SUPERLINK_PORT": str(self.port),
            "SUPERLINK_HOST": "127.0.0.1",
            "CERTS_DIR": str(self.certs),
            "KEYS_DIR": str(self.keys),
            "MODEL_DIR": str(model.resolve()),
        }
        env |= {f"NODE_{i}_DATA_ROOT": str(self.node_images(i)) for i in range(self.nodes)}
        write_env(self.project_dir / ".env", self.nodes, env)
        for i in range(self.nodes):
            dl.make_node_key(self.keys / f"node-{i}")
        dl.make_node_key(self.keys / "intruder")
        self.certs.mkdir(exist_ok=True)
        self._give_to_app_user(self.certs, self.keys)
        self.compose("run", "--rm", "-T", "certs", files=FILES[:2])
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n'
        )
        out = self.workdir / "run-config.toml"
        out.write_text(to_toml(container_run_config(local, self.nodes)))
        return out

    def _split_images(self, image_root: Path, run_config: Mapping[str, Any]) -> dict[str, Any]:
        """Node i's share of ``image_root`` copied to nodes/node-i/images (deploy_local's split)."""
        source = {
            "data.dataset": "imagefolder",
            **run_config,
            "data.root": str(image_root.resolve()),
            "data.num-clients": self.nodes,
        }
        src = self.workdir / "run-config.source.toml"
        src.write_text(to_toml(source))
        dep = dl.LocalDeployment(self.workdir, self.nodes, tls=False, auth=False)
        dep.nodes = [
            dl.Node(i, self.workdir / "nodes" / f"node-{i}", 0, None) for i in range(self.nodes)
        ]
        local = tomllib.loads(dep.split_folders(src, copy=True).read_text())
        for i in range(self.nodes):
            make_readable(self.node_images(i))
        return local

    def _give_to_app_user(self, *paths: Path) -> None:
        """chown to the images' UID from inside a container (right for rootless podman too)."""
        args = ["run", "--rm", "--user", "0", "--entrypoint", "chown"]
        for k, p in enumerate(paths):
            args += ["-v", f"{p}:/own/{k}"]
        own = [f"/own/{k}" for k in range(len(paths))]
        self.engine(*args, self.app_tag, "-R", f"{APP_UID}:{APP_UID}", *own)

    # -- run --------------------------------------------------------------------------------------
    def up(self) -> None:
        """SuperLink first, then the keys are registered, then the SuperNodes and executors."""
        self.compose("up", "-d", "--no-build", "superlink")
        dl.wait_for_port(self.port, timeout=120)
        for i in range(self.nodes):
            self._register(self.keys / f"node-{i}.pub")
        self.compose("up", "-d", "--no-build")

    def _register(self, pub: Path, attempts: int = 20) -> None:
        for _ in range(attempts):
            res = self.flwr("supernode", "register", str(pub), CONNECTION, timeout=60)
            if res.returncode == 0:
                return
            time.sleep(1.5)
        raise RuntimeError(f"flwr supernode register {pub} failed:\n{res.stdout[-3000:]}")

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The ``flwr`` CLI with this demo's connection, in its own process group, bounded."""
        env = {
            **os.environ,
            "FLWR_HOME": str(self.workdir / "flwr-home"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
        proc = subprocess.Popen(
            ["flwr", *args], cwd=REPO, env=env, text=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            dl.stop_group(proc, grace=5)
            out, _ = proc.communicate()
            out += f"\n[timed out after {timeout:.0f}s]"
            proc.returncode = 124
        finally:
            dl.stop_group(proc, grace=2)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")

    def intruder(self) -> dict[str, Any]:
        """A SuperNode with an unregistered key on the project network: must be refused."""
        res = self.engine(
            "run", "--rm", "--name", f"{self.project}_intruder",
            "--label", f"com.docker.compose.project={self.project}",
            "--network", f"{self.project}_default",
            "-v", f"{self.certs / 'ca.crt'}:/app/certificates/ca.crt:ro",
            "-v", f"{self.keys / 'intruder'}:/app/keys/intruder:ro",
            images.flower_image_names()["supernode"],
            "--superlink", "superlink:8000", "--root-certificates", "/app/certificates/ca.crt",
            "--auth-supernode-private-key", "/app/keys/intruder", "--max-retries", "0",
            check=False, timeout=180,
        )  # fmt: skip
        link = self.engine("logs", self.containers()["superlink"], check=False).stdout
        return {
            "returncode": res.returncode,
            "output": res.stdout[-3000:],
            "superlink_refused": LINK in link,
        }

    def run(self, run_config: Path, timeout: float) -> subprocess.CompletedProcess:
        """``flwr run`` of this repository's app on the stack, streamed until it ends."""
        return self.flwr(
            "run", str(REPO), CONNECTION, "--stream", "--run-config", str(run_config),
            timeout=timeout,
        )  # fmt: skip

    # -- results and facts ------------------------------------------------------------------------
    def containers(self) -> dict[str, str]:
        """service -> container name, for this project's containers (by compose labels)."""
        ids = self.engine(
            "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}"
        ).stdout.split()
        out = {}
        for cid in ids:
            res = self.engine(
                "inspect", "--format",
                '{{.Name}} {{index .Config.Labels "com.docker.compose.service"}}', cid,
                check=False,
            )  # fmt: skip
            parts = res.stdout.split()
            if res.returncode == 0 and len(parts) == 2:
                out[parts[1]] = parts[0].lstrip("/")
        return out

    def collect(self, run_name: str) -> dict[str, Any]:
        """Logs of every container and the server's run folder, copied into the workdir."""
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        names = self.containers()
        for service, name in names.items():
            res = self.engine("logs", name, check=False)
            (logs / f"{service}.log").write_text(res.stdout)
        results = self.workdir / "results"
        shutil.rmtree(results, ignore_errors=True)
        results.mkdir()
        self.engine("cp", f"{names['superexec-serverapp']}:/data/server/runs", str(results))
        run_dir = results / "runs" / run_name
        out: dict[str, Any] = {"dir": str(run_dir)}
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            out["metrics"] = [json.loads(line) for line in metrics.read_text().splitlines()]
        for name in ("summary.json", "state.json"):
            if (run_dir / name).exists():
                out[name.split(".")[0]] = json.loads((run_dir / name).read_text())
        return out

    def inspect(self) -> dict[str, Any]:
        """Every project volume's files and every container's mounts and own-layer files."""
        vols = self.engine(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"
        ).stdout.split()
        args = ["run", "--rm", "--user", "0", "--entrypoint", "python"]
        for vol in vols:
            args += ["-v", f"{vol}:/v/{_short(vol, self.project)}:ro"]
        res = self.engine(*args, self.app_tag, "-c", checks.INSPECT_VOLUMES, timeout=300)
        volumes = json.loads(res.stdout.strip().splitlines()[-1])
        containers: dict[str, Any] = {}
        for service, name in self.containers().items():
            mounts = json.loads(self.engine("inspect", "--format", "{{json .Mounts}}", name).stdout)
            diff = self.engine("diff", name, check=False).stdout.splitlines()
            added = [line[2:] for line in diff if line[:2] in ("A ", "C ")]
            containers[service] = {"name": name, "mounts": mounts or [], "added": added}
        names = {
            p.name for i in range(self.nodes) for p in self.node_images(i).rglob("*") if p.is_file()
        }
        return {
            "volumes": volumes,
            "containers": containers,
            "node_roots": {str(i): str(self.node_images(i)) for i in range(self.nodes)},
            "image_names": sorted(names),
        }

    # -- teardown ---------------------------------------------------------------------------------
    def down_command(self) -> str:
        """What takes this project down by hand (after --keep)."""
        cmd = [*self.engine.compose_cmd, "-p", self.project]
        cmd += ["--in-pod", "false"] if self.engine.name == "podman" else []
        cmd += [x for f in FILES for x in ("-f", f)]
        env = " ".join(f"{k}={v}" for k, v in self.engine.env.items())
        return f"cd {self.project_dir} && {env + ' ' if env else ''}{' '.join(cmd)} down -v"

    def down(self) -> dict[str, list[str]]:
        """``down`` with volumes, then remove whatever of the project is left; returns leftovers."""
        with contextlib.suppress(Exception):
            self.compose("down", "-v", "-t", "5", check=False, timeout=300)
        left = self.leftovers()
        if any(left.values()):
            for kind in ("containers", "pods", "networks", "volumes"):
                if left.get(kind):
                    self.engine(*REMOVE[kind], *left[kind], check=False)
            left = self.leftovers()
        return left

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, pods, networks and volumes of this project still there."""
        flt = ["--filter", f"label=com.docker.compose.project={self.project}"]
        out = {
            "containers": self.engine("ps", "-a", "-q", *flt, check=False).stdout.split(),
            "networks": self.engine("network", "ls", "-q", *flt, check=False).stdout.split(),
            "volumes": self.engine("volume", "ls", "-q", *flt, check=False).stdout.split(),
        }
        named = self.engine(
            "ps", "-a", "-q", "--filter", f"name=^{self.project}[_-]", check=False
        ).stdout.split()
        out["containers"] = sorted(set(out["containers"]) | set(named))
        if self.engine.name == "podman":
            pods = self.engine("pod", "ps", "-q", "--filter", f"name={self.project}", check=False)
            out["pods"] = pods.stdout.split()
        return out


def _short(volume: str, project: str) -> str:
    """``<project>_node-0-private`` -> ``node-0-private``."""
    for sep in ("_", "-"):
        if volume.startswith(project + sep):
            return volume[len(project) + 1 :]
    return volume
