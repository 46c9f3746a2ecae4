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

Beside this file: compose_engine.py (podman or Docker), compose_images.py (the images),
compose_project.py (workdir, .env, run config, inputs), compose_stack.py (``ComposeDemo``: one
compose project from its folder to ``down``), compose_checks.py (the checks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Its sibling modules, also when this file is loaded by path (tests) rather than run.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import compose_checks as checks  # noqa: E402
import compose_images as images  # noqa: E402
import compose_project as project  # noqa: E402
from compose_engine import detect_engine, install, missing_tools  # noqa: E402
from compose_stack import ComposeDemo  # noqa: E402

SHARED = images.REPO.parent / "shared"


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
        install()
    engine = detect_engine(ns.engine)
    if engine is None:
        raise RuntimeError(f"no container engine; missing: {', '.join(missing_tools())}")
    report["engine"] = engine.name
    workdir = project.fresh_workdir(Path(ns.workdir), engine)
    stack: ComposeDemo | None = None
    try:
        inputs = project.demo_inputs(ns, workdir)
        app = images.AppBuild(
            f"fedrsclip-app:{ns.app_tag}", ns.torch_index, ns.torch_spec, ns.extra_nodeps,
            ns.ca_cert if ns.ca_cert is not None else images.host_ca_certs(),
        )  # fmt: skip
        t0 = time.monotonic()
        report["build"] = images.build_all(engine, app, ns.flower_images)
        report["build"]["seconds"]["total"] = round(time.monotonic() - t0, 1)
        name = ns.project or project.free_project_name()
        stack = ComposeDemo(engine, workdir, name, ns.nodes, app.tag)
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
