"""docker/compose*.yml: in sync with the generator, valid, one partition, its own image folder
(node config data-root) and own volumes per node; the server mounts no images.

No Docker engine is needed. Every file combination is validated against the Compose
Specification's JSON schema (tests/deploy/compose_spec.json, the schema shipped with
docker-compose 1.29.2, Apache-2.0) and, where the ``docker-compose`` binary is installed, with
``docker-compose config`` too. The images are built and the stack run in test_compose_demo.py.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy import REPO, load_script, skip_or_fail

DOCKER = REPO / "docker"
gen = load_script("gen_compose")
ENV = gen.read_env(DOCKER / ".env")
N = int(ENV["NUM_SUPERNODES"])
OVERLAYS = ["compose.tls.yml", "compose.auth.yml", "compose.gpu.yml"]


def _combinations() -> list[tuple[str, ...]]:
    combos = []
    for r in range(len(OVERLAYS) + 1):
        for extra in itertools.combinations(OVERLAYS, r):
            if "compose.auth.yml" in extra and "compose.tls.yml" not in extra:
                continue  # SuperNode authentication is only offered on top of TLS
            combos.append(("compose.yml", *extra))
    return combos


COMBOS = _combinations()


def _load(name: str, directory: Path = DOCKER) -> dict[str, Any]:
    return yaml.safe_load((directory / name).read_text())


def _merge(files: tuple[str, ...], directory: Path = DOCKER) -> dict[str, Any]:
    """Compose's override rules for what these files use: later command/depends_on replace,
    secrets/volumes merge by target, mappings merge."""
    out: dict[str, Any] = {"services": {}}
    for name in files:
        doc = _load(name, directory)
        for section in ("volumes", "secrets"):
            out.setdefault(section, {}).update(doc.get(section) or {})
        for svc, spec in doc["services"].items():
            cur = out["services"].setdefault(svc, {})
            for key, value in spec.items():
                if key in ("secrets", "volumes") and key in cur:
                    by_target = {_target(v): v for v in cur[key]}
                    by_target.update({_target(v): v for v in value})
                    cur[key] = list(by_target.values())
                elif isinstance(value, dict) and isinstance(cur.get(key), dict):
                    cur[key] = {**cur[key], **value}
                else:
                    cur[key] = value
    return out


def _split(entry: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume; the source may hold ``${VAR:-default}``."""
    body = re.sub(r":(ro|rw)$", "", entry)
    source, _, target = body.rpartition(":")
    return source, target


def _target(entry: Any) -> str:
    return entry["target"] if isinstance(entry, dict) else _split(entry)[1]


def _flag(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_checked_in_files_match_generator_and_env() -> None:
    rendered = gen.render(N)
    for name, text in rendered.items():
        assert (DOCKER / name).read_text() == text, (
            f"docker/{name} is stale. Fix: python scripts/gen_compose.py"
        )
    for i in range(N):
        assert f"NODE_{i}_DATA_ROOT" in ENV and f"NODE_{i}_GPU" in ENV, f"docker/.env: node {i}"
    roots = [ENV[f"NODE_{i}_DATA_ROOT"] for i in range(N)]
    assert len(set(roots)) == N, "docker/.env: every node needs its own image folder"


def test_every_superexec_polls_for_messages_quickly() -> None:
    """Each message waits for the SuperExec's poll (Flower's default: 1 s); 0.1 s everywhere."""
    services = _load("compose.yml")["services"]
    execs = [name for name in services if name.startswith("superexec-")]
    assert len(execs) == N + 1
    for name in execs:
        assert services[name]["environment"]["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.1"


@pytest.mark.parametrize("name", ["compose.yml", *OVERLAYS])
def test_each_file_matches_compose_schema(name: str) -> None:
    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(_load(name))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_generator_for_other_sizes_is_valid(tmp_path: Path, n: int) -> None:
    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    for name, text in gen.render(n).items():
        (tmp_path / name).write_text(text)
        jsonschema.Draft201909Validator(schema).validate(yaml.safe_load(text))
    _check_topology(_merge(("compose.yml", *OVERLAYS), tmp_path), n, tls=True, auth=True, gpu=True)


@pytest.mark.parametrize("files", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_combination_topology(files: tuple[str, ...]) -> None:
    merged = _merge(files)
    _check_topology(
        merged,
        N,
        tls="compose.tls.yml" in files,
        auth="compose.auth.yml" in files,
        gpu="compose.gpu.yml" in files,
    )


def _check_topology(cfg: dict[str, Any], n: int, tls: bool, auth: bool, gpu: bool) -> None:
    svcs = cfg["services"]
    link = svcs["superlink"]["command"]
    assert ("--insecure" in link) is not tls
    assert _flag(link, "--isolation") == "process"
    assert ("--enable-supernode-auth" in link) is auth
    if tls:
        assert _flag(link, "--ssl-certfile") and _flag(link, "--ssl-keyfile")
        assert svcs["superlink"]["depends_on"]["certs"]["condition"] == (
            "service_completed_successfully"
        )
        assert "certs" in svcs
    srv = svcs["superexec-serverapp"]["command"]
    assert _flag(srv, "--runtime-api-address") == "superlink:8000"
    server_mounts = {t for _, t in map(_split, svcs["superexec-serverapp"]["volumes"])}
    assert "/data/images" not in server_mounts, "the server must not see any node's images"
    assert ("--root-certificates" in srv) is tls and ("--insecure" in srv) is not tls

    node_volumes: list[set[str]] = []
    image_folders = set()
    partitions = []
    for i in range(n):
        node = svcs[f"supernode-{i}"]["command"]
        assert _flag(node, "--superlink") == "superlink:8000"
        assert _flag(node, "--isolation") == "process"
        cfg_text = _flag(node, "--node-config")
        pairs = dict(re.findall(r'([\w-]+)=("[^"]*"|\S+)', cfg_text))
        partitions.append(int(pairs["partition-id"]))
        assert int(pairs["num-partitions"]) == n
        assert pairs["private-dir"].strip('"') == "/data/node/private"
        assert pairs["cache-dir"].strip('"') == "/data/node/.cache/features"
        assert pairs["data-root"].strip('"') == "/data/images"
        assert pairs["warm-worker"].strip('"') == "auto"
        assert ("--root-certificates" in node) is tls and ("--insecure" in node) is not tls
        key = _flag(node, "--auth-supernode-private-key")
        assert (key == f"/app/keys/node-{i}") if auth else key is None
        if auth:
            targets = {s["source"]: s["target"] for s in svcs[f"supernode-{i}"]["secrets"]}
            assert targets[f"node-{i}-key"] == key
            assert cfg["secrets"][f"node-{i}-key"]["file"].endswith(f"/node-{i}")

        app = svcs[f"superexec-clientapp-{i}"]
        assert _flag(app["command"], "--runtime-api-address") == f"supernode-{i}:9094"
        assert app["working_dir"] == "/data/node"
        mounts = {t: s for s, t in map(_split, app["volumes"])}
        assert mounts["/data/node/private"] == f"node-{i}-private"
        assert mounts["/data/node/.cache/features"] == f"node-{i}-features"
        assert mounts["/data/images"] == f"${{NODE_{i}_DATA_ROOT:-./data/node-{i}/images}}"
        assert app["volumes"][0].endswith(":/data/images:ro")  # read-only
        image_folders.add(mounts["/data/images"])
        assert {f"node-{i}-private", f"node-{i}-features"} <= set(cfg["volumes"])
        node_volumes.append({mounts["/data/node/private"], mounts["/data/node/.cache/features"]})
        devices = app.get("deploy", {}).get("resources", {}).get("reservations", {})
        if gpu:
            (dev,) = devices["devices"]
            assert dev["capabilities"] == ["gpu"]
            assert dev["device_ids"] == [f"${{NODE_{i}_GPU:-{i}}}"]
        else:
            assert not devices
    assert sorted(partitions) == list(range(n))
    assert len(image_folders) == n, "each node mounts its own image folder"
    for a, b in itertools.combinations(node_volumes, 2):
        assert not a & b, "two nodes share a private-prompt or feature-cache volume"
    assert f"supernode-{n}" not in svcs


def _compose_cli() -> list[str]:
    """docker-compose, or podman-compose (what .ci/run installs); skip (or fail, see
    tests/deploy/__init__.py) where neither is."""
    if shutil.which("docker-compose"):
        return ["docker-compose", "--project-directory", str(DOCKER)]
    if shutil.which("podman-compose") and shutil.which("podman"):
        return ["podman-compose"]
    skip_or_fail("compose", "neither docker-compose nor podman + podman-compose is installed")
    return []


@pytest.mark.parametrize("files", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_docker_compose_config_accepts(files: tuple[str, ...]) -> None:
    """The compose tool itself accepts every combination of files (its own parser, not only
    the JSON schema); volumes and their sources come out as each node needs them."""
    args = _compose_cli()
    for f in files:
        args += ["-f", str(DOCKER / f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    res = subprocess.run(
        [*args, "config"], capture_output=True, text=True, timeout=60, env=env, cwd=DOCKER
    )
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    for i in range(N):
        vols = cfg["services"][f"superexec-clientapp-{i}"]["volumes"]
        # podman-compose keeps relative bind sources relative to the project directory.
        sources = {
            t: str((DOCKER / s).resolve()) if s.startswith(".") else s for s, t in map(_split, vols)
        }
        assert sources["/data/node/private"] == f"node-{i}-private"
        assert sources["/data/node/.cache/features"] == f"node-{i}-features"
        assert sources["/data/images"] == str((DOCKER / ENV[f"NODE_{i}_DATA_ROOT"]).resolve())


def test_a_required_tool_that_is_missing_fails_instead_of_skipping(monkeypatch) -> None:
    """.ci/run sets FEDRSCLIP_REQUIRE once it installed podman: a missing tool is then a red
    test, not a silent skip."""
    import _pytest.outcomes

    monkeypatch.setenv("FEDRSCLIP_REQUIRE", "podman,compose")
    with pytest.raises(_pytest.outcomes.Failed, match="required by FEDRSCLIP_REQUIRE"):
        skip_or_fail("compose", "no compose tool")
    monkeypatch.setenv("FEDRSCLIP_REQUIRE", "")
    with pytest.raises(_pytest.outcomes.Skipped):
        skip_or_fail("compose", "no compose tool")
