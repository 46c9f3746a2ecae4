#!/usr/bin/env python
"""Build and run the docker-compose federation for real, check where data ended up, clean up.

SuperLink, ServerApp executor, N SuperNodes each with its own ClientApp executor (docker/compose.yml
+ compose.tls.yml + compose.auth.yml, unchanged), TLS and SuperNode authentication on. Each node's
executor mounts only its own image folder (read-only) and its own volumes for private prompts and
the feature cache. podman + podman-compose here; Docker Compose where a Docker engine runs::

    python scripts/compose_demo.py --install     # + the podman stack (root, Debian)
    python scripts/compose_demo.py               # stand-in model + UC Merced from ../shared
    python scripts/compose_demo.py --tiny        # tiny random CLIP + synthetic images (as in CI)
    python scripts/compose_demo.py --model DIR --images DIR --run-config my.toml --nodes 3

Steps: install check; images (scripts/compose_images.py); a compose project folder in the
workdir (the compose files for N nodes and a .env with this run's paths); one image folder per
node (the run config's partition of ``--images``); certificates (the compose ``certs`` service);
node keys; SuperLink up, keys registered, the rest up; an unregistered SuperNode, which must be
refused; ``flwr run``; results and logs copied out; privacy checks (scripts/compose_checks.py);
``down`` with volumes, always, then a check that nothing of the project is left.
Writes ``<workdir>/report.json``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compose_checks as checks  # noqa: E402
import compose_images as images  # noqa: E402
import deploy_local as dl  # noqa: E402
import gen_compose as gen  # noqa: E402

REPO = images.REPO
SHARED = REPO.parent / "shared"
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

# The loopback deployment test's settings: quick on 2 CPU cores with the tiny CLIP.
TINY_RUN_CONFIG: dict[str, Any] = {
    "model.device": "cpu",
    "method.name": "fedrsclip",
    "loss.ot-iters": 20,
    "train.epochs": 1,
    "train.batch-size": 8,
    "train.lr": 0.01,
    "data.partitioner": "dirichlet",
    "data.alpha": 0.3,
    "data.min-client-size": 6,
    "data.test-fraction": 0.25,
    "server.num-rounds": 2,
    "server.eval-every": 2,
    "server.timeout": 240.0,
    "run.name": "compose-tiny",
}
# conf/recipe/standin.yaml on Fed-UCMerced.
STANDIN_RUN_CONFIG: dict[str, Any] = {
    "model.device": "cpu",
    "method.name": "fedrsclip",
    "train.optimizer": "adamw",
    "train.lr": 0.01,
    "train.epochs": 3,
    "train.batch-size": 32,
    "loss.ot-iters": 20,
    "data.partitioner": "dirichlet",
    "data.alpha": 0.5,
    "server.num-rounds": 3,
    "server.timeout": 1800.0,
    "run.name": "compose-standin",
}


def free_project_name() -> str:
    return f"fedrsclip-demo-{os.getpid()}"


def write_env(path: Path, n: int, overrides: Mapping[str, str]) -> None:
    """docker/.env with this run's values (paths absolute) for N nodes."""
    env = gen.read_env(gen.DOCKER / ".env")
    for i in range(n):
        env.setdefault(f"NODE_{i}_DATA_ROOT", f"./data/node-{i}/images")
        env.setdefault(f"NODE_{i}_GPU", "0")
    env = {k: v for k, v in env.items() if not _other_node(k, n)}
    env.update({"NUM_SUPERNODES": str(n), **overrides})
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def _other_node(key: str, n: int) -> bool:
    parts = key.split("_")
    return len(parts) > 2 and parts[0] == "NODE" and parts[1].isdigit() and int(parts[1]) >= n


def container_run_config(local: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The per-node-folder run config with the paths the containers see."""
    return {
        **local,
        "model.name": "/models/clip",
        "run.dir": "/data/server/runs",
        "cache.dir": ".cache/features",  # node config cache-dir overrides it on every node
        "client.private-dir": "/data/node/private",  # likewise private-dir
        "data.num-clients": n,
        "server.min-nodes": n,
    }


def readable_by_all(path: Path) -> bool:
    """Whether the container user (another UID) can read a bind-mounted folder."""
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        if not mode & 0o004 or (p.is_dir() and not mode & 0o001):
            return False
    return True


def make_readable(root: Path) -> None:
    """Folders 0755, files 0644: bind-mounted into containers that run as another UID."""
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


@dataclass
class ComposeDemo:
    """One compose project in ``workdir``; ``down()`` removes every container, network, volume."""

    engine: images.Engine
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
        kw.setdefault("timeout", 600)
        return self.engine.compose(self.project_dir, self.project, files, *args, **kw)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
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
        out.write_text(dl.toml_dump(container_run_config(local, self.nodes)))
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
        src.write_text(dl.toml_dump(source))
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


def tiny_inputs(workdir: Path) -> tuple[Path, Path]:
    """A tiny random CLIP and synthetic images (the unit tests' fixtures) in ``workdir``."""
    sys.path.insert(0, str(REPO))
    from testkit.images import TINY_CLASSES, write_synthetic_images
    from testkit.models import save_tiny_clip

    model = save_tiny_clip(workdir / "inputs" / "tiny-clip")
    imgs = write_synthetic_images(workdir / "inputs" / "images", TINY_CLASSES, per_class=8)
    return model, imgs


MARKER = ".fedrsclip-compose-demo"


def fresh_workdir(path: Path, engine: images.Engine) -> Path:
    """An empty ``path`` for a new demo; refuses a non-empty folder not made by a demo."""
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise ValueError(f"{path} is not empty and not a demo workdir: pick another --workdir")
        shutil.rmtree(path, ignore_errors=True)
        if path.exists() and engine.name == "podman":  # rootless: files of the containers' UID
            images.run(["podman", "unshare", "rm", "-rf", str(path)], env=engine.env, check=False)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    return path


def demo_inputs(ns: argparse.Namespace, workdir: Path) -> tuple[Path, Path, dict[str, Any]]:
    """(model folder, image folder, run config) from the options."""
    if ns.tiny:
        model, image_root = tiny_inputs(workdir)
        run_config = dict(TINY_RUN_CONFIG)
    else:
        model, image_root = Path(ns.model), Path(ns.images)
        run_config = dict(STANDIN_RUN_CONFIG)
    if ns.run_config:
        run_config.update(tomllib.loads(Path(ns.run_config).read_text()))
    if ns.rounds:
        run_config["server.num-rounds"] = ns.rounds
    return model, image_root, run_config


def run_stack(
    stack: ComposeDemo, ns: argparse.Namespace, inputs: tuple[Path, Path, dict[str, Any]]
) -> list[str]:
    """Prepare, up, intruder, run, collect, inspect; returns the problems found."""
    with stack.timed("prepare"):
        cfg = stack.prepare(*inputs)
    with stack.timed("up"):
        stack.up()
    if ns.fail_at == "up":
        raise RuntimeError("--fail-at up: stopping on purpose")
    with stack.timed("intruder"):
        stack.facts["intruder"] = stack.intruder()
    with stack.timed("run"):
        res = stack.run(cfg, ns.timeout)
    config = tomllib.loads(cfg.read_text())
    with stack.timed("collect"):
        stack.facts["run"] = {"returncode": res.returncode, **stack.collect(config["run.name"])}
        (stack.workdir / "logs" / "flwr-run.log").write_text(res.stdout)
        stack.facts |= stack.inspect()
        stack.facts["experiment"] = stack.facts["run"].get("state", {}).get("experiment_id")
    problems = checks.check_run(stack.facts, stack.nodes, int(config["server.num-rounds"]))
    return problems + checks.check_privacy(stack.facts, stack.nodes)


def demo(ns: argparse.Namespace) -> dict[str, Any]:
    """Everything, in order; the report (also <workdir>/report.json) says what ran, how long,
    and what failed. The stack is taken down whatever happens (unless --keep)."""
    report: dict[str, Any] = {"problems": []}
    t_start = time.monotonic()
    if ns.install:
        images.install()
    engine = images.detect_engine(ns.engine)
    if engine is None:
        raise RuntimeError(f"no container engine; missing: {', '.join(images.missing_tools())}")
    report["engine"] = engine.name
    workdir = fresh_workdir(Path(ns.workdir), engine)
    stack: ComposeDemo | None = None
    try:
        inputs = demo_inputs(ns, workdir)
        app = images.AppBuild(
            f"fedrsclip-app:{ns.app_tag}", ns.torch_index, ns.torch_spec, ns.extra_nodeps,
            ns.ca_cert if ns.ca_cert is not None else images.host_ca_certs(),
        )  # fmt: skip
        t0 = time.monotonic()
        report["build"] = images.build_all(engine, app, ns.flower_images)
        report["build"]["seconds"]["total"] = round(time.monotonic() - t0, 1)
        stack = ComposeDemo(engine, workdir, ns.project or free_project_name(), ns.nodes, app.tag)
        report["project"] = stack.project
        report["problems"] += run_stack(stack, ns, inputs)
    except Exception as exc:
        report["problems"].append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if stack is not None and not ns.keep:
            with stack.timed("down"):
                report["leftovers"] = stack.down()
            if any(report["leftovers"].values()):
                report["problems"].append(f"left after down: {report['leftovers']}")
        elif stack is not None:
            report["down"] = stack.down_command()
            print(f"left running; to stop: {report['down']}")
        report["seconds"] = {**(stack.seconds if stack else {}), "total": _since(t_start)}
        report["facts"] = stack.facts if stack else {}
        (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 1)


def _nodeps_for(model: Path) -> str:
    """timm for a model whose vision tower is a timm model (installed without torchvision)."""
    config = model / "config.json"
    text = config.read_text() if config.is_file() else ""
    return "timm==1.0.31" if '"timm_wrapper"' in text else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=str(images.CACHE / "demo"))
    parser.add_argument("--project", help="compose project name (default: unique)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny random CLIP, synthetic images")
    parser.add_argument("--model", default=str(SHARED / "models" / "rs-lit-b0-minilm"))
    parser.add_argument("--images", default=str(SHARED / "data" / "ucmerced"))
    parser.add_argument("--run-config", help="TOML file of run-config overrides")
    parser.add_argument("--rounds", type=int, help="server.num-rounds")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for flwr run")
    parser.add_argument("--keep", action="store_true", help="leave the stack running (no down)")
    parser.add_argument("--install", action="store_true", help="install the podman stack first")
    parser.add_argument("--engine", choices=["auto", "podman", "docker"], default="auto")
    parser.add_argument("--flower-images", choices=["auto", "standin", "pull"], default="auto")
    parser.add_argument("--app-tag", default="1.41.0-cpu", help="fedrsclip-app:<this>")
    parser.add_argument("--torch-index", help="wheel index for torch (default: local wheel/CPU)")
    parser.add_argument("--torch-spec", help='e.g. "torch==2.13.0"')
    parser.add_argument(
        "--extra-nodeps",
        default=None,
        help='packages installed with --no-deps, e.g. "timm==1.0.31" (default: timm when the '
        "model has a timm vision tower, as the stand-in rs-lit-b0-minilm does)",
    )
    parser.add_argument("--ca-cert", action="append", type=Path, help="default: the host's")
    parser.add_argument("--fail-at", choices=["up"], help=argparse.SUPPRESS)  # cleanup test
    ns = parser.parse_args(argv)
    if not ns.tiny and not (Path(ns.model).is_dir() and Path(ns.images).is_dir()):
        parser.error(f"no model/images at {ns.model} / {ns.images}: pass them, or use --tiny")
    if ns.extra_nodeps is None:
        ns.extra_nodeps = "" if ns.tiny else _nodeps_for(Path(ns.model))
    try:
        report = demo(ns)
    except Exception as exc:
        print(f"compose demo failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("build", "seconds", "problems")}, indent=2))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
