"""Deployment Engine on loopback: SuperLink + 3 SuperNodes as processes, TLS and node auth on.

Uses scripts/deploy_local.py (what users run), a tiny random CLIP and synthetic images, in its
per-node-folder mode (--split-folders: each SuperNode's data-root is its own image folder, the run
uses data.partitioner=local). Every process is started in its own process group by the deployment
and stopped by it (context manager), also when an assertion fails; the test checks afterwards
that none is left.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from safetensors import safe_open

from testkit.flwr_run import to_toml
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.run_config import tiny_run_config
from tests.deploy import REPO, load_script

dl = load_script("deploy_local")


def test_certs_chain_and_sans(tmp_path: Path) -> None:
    paths = dl.make_certs(tmp_path, sans=["superlink", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    srv = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "superlink"} <= set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1", "10.0.0.7"} <= ips
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert oct(paths["ca_key"].stat().st_mode & 0o777) == "0o600"


def test_node_key_is_what_flower_loads(tmp_path: Path) -> None:
    priv, pub = dl.make_node_key(tmp_path / "node-0")
    key = load_ssh_private_key(priv.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == 384
    assert load_ssh_public_key(pub.read_bytes()).public_numbers() == (
        key.public_key().public_numbers()
    )


def test_node_config_is_per_node(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    dep = dl.LocalDeployment(tmp_path, 3, tls=False, auth=False)
    dep.prepare()
    configs = [parse_config_args([dep.node_config(n)]) for n in dep.nodes]
    assert [c["partition-id"] for c in configs] == [0, 1, 2]
    assert {c["num-partitions"] for c in configs} == {3}
    assert len({c["private-dir"] for c in configs}) == 3
    assert len({c["cache-dir"] for c in configs}) == 3
    assert not any("data-root" in c for c in configs)
    assert "insecure = true" in (dep.flwr_home / "config.toml").read_text()


def test_split_folders_gives_each_node_its_partition(tmp_path: Path, tiny_clip_dir: Path) -> None:
    from flwr.common.config import parse_config_args

    images = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=4)
    src = tmp_path / "run.toml"
    src.write_text(to_toml(tiny_run_config(tmp_path, tiny_clip_dir, images)))
    dep = dl.LocalDeployment(tmp_path / "deploy", 3, tls=False, auth=False)
    dep.prepare()
    local = tomllib.loads(dep.split_folders(src).read_text())
    assert local["data.partitioner"] == "local" and local["data.root"] == ""
    assert local["data.class-names"] == ",".join(sorted(TINY_CLASSES))
    split = json.loads((dep.workdir / "split" / "partition.json").read_text())
    seen: set[str] = set()
    for node, client in zip(dep.nodes, split["clients"], strict=True):
        cfg = parse_config_args([dep.node_config(node)])
        assert cfg["data-root"] == str(node.images)
        files = {f"imagefolder/{p.relative_to(node.images)}" for p in node.images.rglob("*.png")}
        assert files == set(client["train_ids"] + client["test_ids"])
        assert all(p.is_symlink() for p in node.images.rglob("*.png"))
        assert not files & seen
        seen |= files
    assert len(seen) == 4 * len(TINY_CLASSES)
    with pytest.raises(ValueError, match="data.num-clients=2"):
        dl.LocalDeployment(tmp_path / "d2", 2, tls=False, auth=False).split_folders(src)


def _deployment_run_config(tmp_path: Path, tiny_clip_dir: Path, extra: dict) -> tuple[Path, Path]:
    """Synthetic images and the tiny run config a loopback deployment runs: (images, toml)."""
    images = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=8)
    cfg = tiny_run_config(tmp_path, tiny_clip_dir, images)
    cfg.update(
        {
            # Relative: resolved in each ClientApp's working dir (its SuperNode's node dir).
            "cache.dir": ".cache/features",
            "server.eval-every": 2,  # evaluate once (after round 2): one ClientApp wave fewer
            "server.timeout": 240.0,
            **extra,
        }
    )
    run_config = tmp_path / "run-config.toml"
    run_config.write_text(to_toml(cfg))
    return images, run_config


@pytest.mark.slow
def test_deployment_tls_auth_three_supernodes(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """Institutions with their own folders: TLS, node auth, an intruder refused, and no node
    (nor the server) reading any image but its own."""
    # Must NOT be used: each SuperNode's node config sets its own private-dir.
    extra = {"client.private-dir": str(tmp_path / "run-config-private")}
    images, run_config = _deployment_run_config(tmp_path, tiny_clip_dir, extra)

    dep = dl.LocalDeployment(tmp_path / "deploy", num_nodes=3, tls=True, auth=True)
    with dep:
        dep.prepare()
        local_config = dep.split_folders(run_config, copy=True)
        shutil.rmtree(images)  # the shared folder is gone: only the nodes' own copies remain
        dep.start_superlink()
        dep.start_supernodes()
        # An unregistered key is refused by the SuperLink, and that SuperNode gives up.
        intruder_key, _ = dl.make_node_key(dep.workdir / "keys" / "intruder")
        intruder = dl.Node(99, dep.workdir / "nodes" / "intruder", dl.free_port(), intruder_key)
        intruder.dir.mkdir(parents=True)
        proc = dep._spawn(dep.supernode_argv(intruder, max_retries="0"), intruder.dir, intruder.log)
        rc = proc.wait(timeout=90)
        log = intruder.log.read_text()
        assert rc != 0 and "Failed to activate SuperNode" in log, log[-3000:]
        link_log = (dep.logs / "superlink.log").read_text()
        assert "No SuperNode found with the given public key" in link_log

        res = dep.run(REPO, local_config, timeout=420)
        out = res.stdout
        assert res.returncode == 0, out[-6000:]
        pids = [p.pid for p in dep.procs]
    left = [pid for pid in pids if dl.group_alive(pid)]
    assert not left, f"process groups left running: {left}"

    run = tmp_path / "runs" / "tiny"
    assert (run / "summary.json").is_file(), out[-6000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["train_loss"])
        assert r["clients_ok"] == 3 and r["clients_failed"] == 0 and r["replies_rejected"] == 0
        assert sorted(r["per_client"]) == ["0", "1", "2"]
        assert r["reply_array_keys"] == ["shared_ctx"]
    assert 0.0 <= rows[-1]["personalised_accuracy"] <= 1.0

    # The server listed no data: a config-only manifest, no server-side feature cache.
    manifest = json.loads((run / "partition.json").read_text())
    assert manifest["partitioner"] == "local" and manifest["data_visible_to_server"] is False
    assert manifest["clients"] == [] and not (run / "partition_heatmap.png").exists()
    assert not (dep.workdir / "superlink" / ".cache").exists()

    experiment = json.loads((run / "state.json").read_text())["experiment_id"]
    assert not (tmp_path / "run-config-private").exists()
    for node in dep.nodes:
        i = node.index
        store = node.private_dir / experiment
        # The client's folder and the lock file that keeps two processes out of it.
        assert sorted(p.name for p in store.iterdir()) == [f"client-{i}", f"client-{i}.lock"]
        files = sorted(p.name for p in (store / f"client-{i}").iterdir())
        assert files == [
            "mix-r00002.json",  # θ of the personalised head, written at the one evaluation
            "private-r00001.safetensors",
            "private-r00002.safetensors",
        ]
        caches = list(node.cache_dir.glob("*.safetensors"))
        assert caches, f"no feature cache in {node.cache_dir}"
        # Each node encoded exactly its own folder's images (train + test), nothing else.
        ids: set[str] = set()
        for path in caches:
            with safe_open(str(path), framework="pt") as f:
                ids |= set(json.loads(f.metadata()["ids"]))
        own = {f"imagefolder/{p.relative_to(node.images)}" for p in node.images.rglob("*.png")}
        assert ids == own, f"node {i} encoded {sorted(ids - own)} outside its folder"
        # The node's warm worker (client.warm-worker=auto: started by the first message) ran
        # the later ones, in a private directory, and is gone with the deployment.
        worker = node.private_dir / ".warm-worker"
        assert stat.S_IMODE(worker.stat().st_mode) == 0o700
        assert (worker / "worker.log").read_text().count(" done") >= 1, "no warm message"
        assert not _workers_running(worker), f"node {i}'s warm worker outlived the deployment"
    assert os.environ.get("FLWR_HOME") != str(dep.flwr_home)


def _workers_running(directory: Path) -> list[int]:
    """Processes whose command line is a warm worker serving ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"client_app.worker" in cmd and os.fsencode(directory) in cmd:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("method", ["promptfolio", "pfedmoap"])
def test_deployment_runs_the_new_baselines(
    tmp_path: Path, tiny_clip_dir: Path, method: str
) -> None:
    """PromptFolio and pFedMoAP through the Deployment Engine (3 SuperNodes, own folders): both
    rounds complete on every node, the reply carries the declared shared set only, and pFedMoAP's
    second message to each node carries its own experts (prompt.experts - 1 prompts more)."""
    extra = {"method.name": method, "prompt.experts": 2, "prompt.n-ctx": 4}
    _, run_config = _deployment_run_config(tmp_path, tiny_clip_dir, extra)
    dep = dl.LocalDeployment(tmp_path / "deploy", num_nodes=3, tls=False, auth=False)
    with dep:
        dep.prepare()
        local_config = dep.split_folders(run_config, copy=True)
        dep.start_superlink()
        dep.start_supernodes()
        res = dep.run(REPO, local_config, timeout=420)
        assert res.returncode == 0, res.stdout[-6000:]

    run = tmp_path / "runs" / "tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["clients_ok"] == 3 and r["clients_failed"] == 0 and r["replies_rejected"] == 0
        assert r["reply_array_keys"] == ["shared_ctx"]
        assert sorted(r["per_client"]) == ["0", "1", "2"]
    assert 0.0 <= rows[-1]["personalised_accuracy"] <= 1.0
    if method == "pfedmoap":
        expert_bytes = 1 * 4 * 32 * 4  # prompt.experts - 1 prompts of 4 x 32 (tiny CLIP), fp32
        first, second = rows[0]["per_client"], rows[1]["per_client"]
        for pid in ("0", "1", "2"):
            extra = second[pid]["bytes_received"] - first[pid]["bytes_received"]
            assert extra >= expert_bytes, (pid, extra)
