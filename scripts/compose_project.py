"""The compose demo's files on the host: its workdir, the project's .env, the run config the
containers see, and the model and images it runs on.

No container is started here (only a leftover workdir of the containers' UID is removed), so the
demo's inputs and settings are unit-tested without an engine. Used by compose_demo.py and
compose_stack.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Its sibling modules, also when this file is loaded by path (tests) rather than run.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_compose as gen  # noqa: E402
from compose_engine import Engine, run  # noqa: E402
from compose_images import REPO  # noqa: E402

if str(REPO) not in sys.path:  # testkit, beside scripts/
    sys.path.insert(0, str(REPO))
from testkit.run_config import TINY_SETTINGS  # noqa: E402

# The tests' tiny-CLIP settings (testkit), evaluated once, after the last round.
TINY_RUN_CONFIG: dict[str, Any] = {
    **TINY_SETTINGS,
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
    """Unique to this process, so a demo never takes over another one's containers."""
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


def tiny_inputs(workdir: Path) -> tuple[Path, Path]:
    """A tiny random CLIP and synthetic images (the unit tests' fixtures) in ``workdir``."""
    from testkit.images import TINY_CLASSES, write_synthetic_images
    from testkit.models import save_tiny_clip

    model = save_tiny_clip(workdir / "inputs" / "tiny-clip")
    imgs = write_synthetic_images(workdir / "inputs" / "images", TINY_CLASSES, per_class=8)
    return model, imgs


MARKER = ".fedrsclip-compose-demo"


def fresh_workdir(path: Path, engine: Engine) -> Path:
    """An empty ``path`` for a new demo; refuses a non-empty folder not made by a demo."""
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise ValueError(f"{path} is not empty and not a demo workdir: pick another --workdir")
        shutil.rmtree(path, ignore_errors=True)
        if path.exists() and engine.name == "podman":  # rootless: files of the containers' UID
            run(["podman", "unshare", "rm", "-rf", str(path)], env=engine.env, check=False)
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
