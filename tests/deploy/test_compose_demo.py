"""The docker-compose demo (scripts/compose_demo.py), built and run for real where an engine is.

Unit tests of its rules and inputs need no engine. The slow tests run the whole demo with the tiny
random CLIP and synthetic images: images built offline (Debian base from debootstrap, Flower
stand-ins, app image), SuperLink + ServerApp executor + 3 SuperNodes each with its own ClientApp
executor, TLS and node authentication, an unregistered node refused, 2 rounds, then `down`; and
once more stopping on purpose after `up`, to see that nothing is left either way. They skip where
neither podman with podman-compose >= 1.1 nor a Docker engine with compose is installed
(.ci/run installs them: `python scripts/compose_images.py install`).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import REPO, load_script, skip_or_fail

demo = load_script("compose_demo")
checks = demo.checks
images = demo.images
project = demo.project


# -- rules (no engine) --------------------------------------------------------------------------
def _facts(n: int = 2) -> dict[str, Any]:
    """What a clean run looks like, as ComposeDemo.inspect/collect/intruder report it."""
    exp = "exp123"
    roots = {str(i): f"/w/nodes/node-{i}/images" for i in range(n)}
    volumes: dict[str, Any] = {
        "server-runs": {
            "tiny/checkpoints/shared-r00002.safetensors": {"tensors": ["shared_ctx"], "meta": []},
            "tiny/curves.png": {"size": 10},
        },
        "superlink-state": {"state.db": {"size": 10}},
    }
    containers: dict[str, Any] = {
        "superlink": {"mounts": [{"Destination": "/app/state", "RW": True}], "added": []},
        "superexec-serverapp": {
            "mounts": [{"Source": "/w/model", "Destination": "/models/clip", "RW": False}],
            "added": ["/app/.flwr/apps/x/task/data.py"],
        },
    }
    for i in range(n):
        volumes[f"node-{i}-private"] = {
            f"{exp}/client-{i}/private-r00002.safetensors": {"tensors": ["private"], "meta": []}
        }
        volumes[f"node-{i}-features"] = {"abc.safetensors": {"tensors": ["g"], "meta": ["ids"]}}
        containers[f"superexec-clientapp-{i}"] = {
            "mounts": [{"Source": roots[str(i)], "Destination": "/data/images", "RW": False}],
            "added": [],
        }
        containers[f"supernode-{i}"] = {"mounts": [], "added": []}
    metrics = [
        {"round": r, "clients_ok": n, "clients_failed": 0, "replies_rejected": 0,
         "reply_array_keys": ["shared_ctx"]}
        for r in (1, 2)
    ]  # fmt: skip
    return {
        "experiment": exp,
        "volumes": volumes,
        "containers": containers,
        "node_roots": roots,
        "image_names": ["river_00.png", "beach_03.png"],
        "run": {"returncode": 0, "metrics": metrics, "summary": {"rounds": 2}},
        "intruder": {
            "returncode": 1,
            "output": "[code: 2004] Failed to activate SuperNode.",
            "superlink_refused": True,
        },
    }


def test_clean_run_passes() -> None:
    facts = _facts()
    assert checks.check_privacy(facts, 2) == []
    assert checks.check_run(facts, 2, rounds=2) == []


def _leak(facts: dict[str, Any], case: str) -> None:
    v, c = facts["volumes"], facts["containers"]
    if case == "other client's prompt":
        v["node-1-private"]["exp123/client-0/private-r00001.safetensors"] = {"tensors": ["private"]}
    elif case == "prompt on the server":
        v["server-runs"]["x/private-r00001.safetensors"] = {}
    elif case == "prompt in a layer":
        c["supernode-0"]["added"].append("/app/private/private-r00001.safetensors")
    elif case == "no prompt":
        v["node-0-private"] = {}
    elif case == "features on the server":
        v["server-runs"]["cache/k.safetensors"] = {"tensors": ["g"], "meta": ["ids"]}
    elif case == "image on the server":
        c["superexec-serverapp"]["added"].append("/tmp/river_00.png")
    elif case == "image in a volume":
        v["superlink-state"]["beach_03.png"] = {}
    elif case == "other node's folder":
        c["superexec-clientapp-1"]["mounts"].append(
            {"Source": "/w/nodes/node-0/images", "Destination": "/x", "RW": False}
        )
    elif case == "images read-write":
        c["superexec-clientapp-0"]["mounts"][0]["RW"] = True
    elif case == "server mounts images":
        c["superexec-serverapp"]["mounts"].append(
            {"Source": "/elsewhere", "Destination": "/data/images", "RW": False}
        )
    elif case == "missing executor":
        del c["superexec-clientapp-1"]


@pytest.mark.parametrize(
    "case",
    [
        "other client's prompt", "prompt on the server", "prompt in a layer", "no prompt",
        "features on the server", "image on the server", "image in a volume",
        "other node's folder", "images read-write", "server mounts images", "missing executor",
    ],
)  # fmt: skip
def test_privacy_problems_are_found(case: str) -> None:
    facts = copy.deepcopy(_facts())
    _leak(facts, case)
    assert checks.check_privacy(facts, 2), case


def test_run_problems_are_found() -> None:
    for change in (
        {"run": {"returncode": 1, "metrics": [], "summary": None}},
        {"intruder": {"returncode": 0, "output": "", "superlink_refused": False}},
    ):
        assert checks.check_run({**_facts(), **change}, 2, rounds=2)
    facts = _facts()
    facts["run"]["metrics"][1]["clients_ok"] = 1
    assert checks.check_run(facts, 2, rounds=2)


def test_env_and_run_config_for_n_nodes(tmp_path: Path) -> None:
    project.write_env(tmp_path / ".env", 2, {"MODEL_DIR": "/m", "NODE_0_DATA_ROOT": "/n0"})
    env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    assert env["NUM_SUPERNODES"] == "2" and env["MODEL_DIR"] == "/m"
    assert env["NODE_0_DATA_ROOT"] == "/n0" and "NODE_1_DATA_ROOT" in env
    assert not any(k.startswith("NODE_2_") for k in env)
    cfg = project.container_run_config({"data.partitioner": "local", "model.name": "/host"}, 2)
    assert cfg["model.name"] == "/models/clip" and cfg["run.dir"] == "/data/server/runs"
    assert cfg["data.num-clients"] == 2 == cfg["server.min-nodes"]
    assert cfg["data.partitioner"] == "local"


def test_node_image_folders_and_container_run_config(tmp_path: Path) -> None:
    """The host-side split (no engine): each node gets its own share of the images and the
    run config flwr run sends names only container paths, with the class names spelled out."""
    from testkit.images import TINY_CLASSES, write_synthetic_images

    root = write_synthetic_images(tmp_path / "images", TINY_CLASSES[:3], per_class=4, size=8)
    stack = demo.ComposeDemo(images.Engine("podman", []), tmp_path / "w", "p", nodes=2)
    stack.workdir.mkdir()
    local = stack._split_images(root, {"model.name": "/host/model", "data.seed": 0})
    shares = [sorted(p.name for p in stack.node_images(i).rglob("*.png")) for i in range(2)]
    assert sum(map(len, shares)) == 12 and not set(shares[0]) & set(shares[1])
    cfg = project.container_run_config(local, 2)
    assert cfg["data.partitioner"] == "local" and not cfg["data.root"]  # no host path
    assert cfg["model.name"] == "/models/clip"
    assert sorted(cfg["data.class-names"].split(",")) == sorted(TINY_CLASSES[:3])


def test_workdir_is_only_emptied_when_a_demo_made_it(tmp_path: Path) -> None:
    engine = images.Engine("podman", [])
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a demo workdir"):
        project.fresh_workdir(tmp_path, engine)
    assert (tmp_path / "mine.txt").exists()
    work = project.fresh_workdir(tmp_path / "w", engine)
    (work / "old-report.json").write_text("{}")
    assert list(project.fresh_workdir(work, engine).iterdir()) == [work / project.MARKER]


def test_torch_from_a_local_wheel_or_an_index(tmp_path: Path, monkeypatch) -> None:
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.touch()
    monkeypatch.setattr(images, "local_torch_wheel", lambda version=None: wheel)
    args, flags = images.AppBuild().args(images.Engine("podman", []))
    assert args["TORCH_INDEX"] == "" and args["WHEELS"] == str(tmp_path)
    assert args["TORCH_SPEC"] == "torch==2.13.0+cpu"
    assert flags == ["-v", f"{tmp_path}:{tmp_path}:ro"]
    cuda = images.AppBuild(torch_index="https://download.pytorch.org/whl/cu124")
    args, flags = cuda.args(images.Engine("podman", []))
    assert args["TORCH_INDEX"].endswith("/cu124") and not flags and "WHEELS" not in args
    args, flags = images.AppBuild().args(images.Engine("docker", []))
    assert args["TORCH_INDEX"].endswith("/cpu") and not flags


def test_dockerfiles_keep_flower_names_and_build_inputs() -> None:
    app = (REPO / "docker" / "Dockerfile").read_text()
    assert "FROM flwr/superexec:${BASE_TAG}" in app
    for arg in ("TORCH_INDEX", "TORCH_SPEC", "WHEELS", "EXTRA_NODEPS"):
        assert f"ARG {arg}" in app
    assert "COPY docker/ca-certificates/" in app
    standin = (REPO / "docker" / "flwr-standin" / "Dockerfile").read_text()
    for target in ("superlink", "supernode", "superexec"):
        assert f'FROM base AS {target}\nENTRYPOINT ["flower-{target}"]' in standin
    assert "--uid 49999" in standin and "/python/venv" in standin
    names = images.flower_image_names("1.41.0")
    assert names["superexec"].endswith("flwr/superexec:1.41.0-py3.11-ubuntu24.04")


def test_extra_ca_certs_are_removed_after_a_build(tmp_path: Path) -> None:
    cert = tmp_path / "proxy.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    with images.ca_certs_in_context([cert]):
        assert (images.CA_DIR / "extra-proxy.crt").exists()
    assert not (images.CA_DIR / "extra-proxy.crt").exists()


# -- the real thing -------------------------------------------------------------------------------
@functools.cache
def _engine() -> Any:
    engine = images.detect_engine()
    if engine is None:
        skip_or_fail(
            "podman",
            "no podman + podman-compose>=1.1 nor Docker: scripts/compose_images.py install",
        )
    return engine


def _run_demo(workdir: Path, project: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compose_demo.py"), "--tiny",
         "--workdir", str(workdir), "--project", project, *extra],
        capture_output=True, text=True, timeout=3000, cwd=REPO,
    )  # fmt: skip
    report = json.loads((workdir / "report.json").read_text())
    return res.returncode, report, res.stdout[-3000:] + res.stderr[-5000:]


def _nothing_left(project: str) -> None:
    flt = ["--filter", f"label=com.docker.compose.project={project}"]
    for what in (["ps", "-a", "-q"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
        assert _engine()(*what, *flt).stdout.split() == [], what
    assert _engine()("ps", "-a", "-q", "--filter", f"name={project}").stdout.split() == []


@pytest.mark.slow
def test_compose_demo_end_to_end(tmp_path: Path) -> None:
    _engine()
    project = f"fedrsclip-ci-{os.getpid()}"
    rc, report, out = _run_demo(tmp_path / "demo", project)
    saved = images.CACHE / "last-ci-report.json"  # build/run times, kept for docs/deploy.md
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "demo" / "report.json", saved)
    assert rc == 0 and report["problems"] == [], (report["problems"], out)
    facts = report["facts"]
    # The run completed on all 3 nodes, replies carried only the shared prompt.
    rows = facts["run"]["metrics"]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["clients_ok"] == 3 and r["reply_array_keys"] == ["shared_ctx"] for r in rows)
    # Node i's private prompts are in its own volume, under its own client id, nowhere else.
    exp = facts["experiment"]
    for i in range(3):
        files = facts["volumes"][f"node-{i}-private"]
        # Its private prompt versions, the personalised head's θ per evaluation, and the lock
        # that keeps a second process out of the client's folder.
        mine = (f"{exp}/client-{i}/private-r", f"{exp}/client-{i}/mix-r", f"{exp}/client-{i}.lock")
        # Beside them, the node's warm worker (client.warm-worker=auto) and its log.
        worker = ".warm-worker/"
        assert files and all(p.startswith((*mine, worker)) for p in files), files
        assert any(p.startswith(mine[0]) for p in files)
        assert f"{worker}worker.log" in files, f"node {i} started no warm worker: {files}"
    holders = {
        v for v, fs in facts["volumes"].items() for p in fs if "private-r" in p or "mix-r" in p
    }
    assert holders == {f"node-{i}-private" for i in range(3)}
    # The server side mounts no image folder and holds no image and no feature.
    for service in ("superlink", "superexec-serverapp"):
        info = facts["containers"][service]
        assert "/data/images" not in {m["Destination"] for m in info["mounts"]}
        assert not [p for p in info["added"] if p.endswith((".png", ".safetensors"))]
    for vol in ("server-runs", "superlink-state"):
        assert not any("ids" in f.get("meta", []) for f in facts["volumes"][vol].values())
    # An unregistered node was refused.
    assert facts["intruder"]["returncode"] != 0 and facts["intruder"]["superlink_refused"]
    assert not any(report["leftovers"].values()), report["leftovers"]
    _nothing_left(project)


@pytest.mark.slow
def test_compose_demo_cleans_up_on_failure(tmp_path: Path) -> None:
    _engine()
    project = f"fedrsclip-fail-{os.getpid()}"
    rc, report, out = _run_demo(tmp_path / "demo", project, "--fail-at", "up")
    assert rc == 1, out
    assert any("--fail-at up" in p for p in report["problems"]), report["problems"]
    assert "up" in report["seconds"] and not any(report["leftovers"].values())
    _nothing_left(project)
