"""What the compose demo checks after a run, as pure functions of facts gathered from the engine.

The facts (see ``compose_stack.ComposeDemo.inspect``): every project volume's files (with each
safetensors file's tensor names and metadata keys, read inside a helper container), every
container's mounts and the files it added to its own layer, the run's metrics and the
unregistered node's exit. Kept apart from the orchestration so the rules are unit-tested without
containers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
PRIVATE_FILE = re.compile(r"(^|/)private-r\d+\.safetensors$")
SERVER_SERVICES = ("superlink", "superexec-serverapp")

# Run inside the app image with every project volume mounted read-only at /v/<volume>: prints
# {volume: {relative path: {"size", "tensors", "meta"}}} as JSON.
INSPECT_VOLUMES = """\
import json, os
from safetensors import safe_open
out = {}
for vol in sorted(os.listdir("/v")):
    files = {}
    for root, _, names in os.walk(os.path.join("/v", vol)):
        for name in names:
            path = os.path.join(root, name)
            info = {"size": os.path.getsize(path)}
            if name.endswith(".safetensors"):
                try:
                    with safe_open(path, framework="np") as f:
                        info["tensors"] = sorted(f.keys())
                        info["meta"] = sorted(f.metadata() or {})
                except Exception as exc:
                    info["error"] = repr(exc)
            files[os.path.relpath(path, os.path.join("/v", vol))] = info
    out[vol] = files
print(json.dumps(out))
"""


def is_private(path: str, info: Mapping[str, Any] | None = None) -> bool:
    """A private prompt: the store's file name, or a safetensors file holding ``private``."""
    return bool(PRIVATE_FILE.search(path)) or "private" in (info or {}).get("tensors", [])


def is_features(info: Mapping[str, Any]) -> bool:
    """A frozen image-feature cache file (its metadata lists the image ids)."""
    return "ids" in info.get("meta", [])


def is_dataset_image(path: str, names: frozenset[str]) -> bool:
    """One of the nodes' images (by file name; the run's own plots are not)."""
    return path.lower().endswith(IMAGE_SUFFIXES) and path.rsplit("/", 1)[-1] in names


def check_privacy(facts: Mapping[str, Any], n: int) -> list[str]:
    """Problems with where private prompts, features and images ended up (empty: none).

    * node i's private prompts are in volume ``node-i-private`` under ``<experiment>/client-i/``,
      and no other volume or container layer holds a private prompt;
    * node i's feature cache is in ``node-i-features`` and nowhere else;
    * ClientApp executor i mounts node i's image folder read-only at /data/images, and no other
      container mounts that folder;
    * the server side (SuperLink, ServerApp executor) mounts no image folder and holds no image and
      no feature, neither in its volumes nor in its own layer.
    """
    problems: list[str] = []
    volumes: Mapping[str, Mapping[str, Any]] = facts["volumes"]
    containers: Mapping[str, Mapping[str, Any]] = facts["containers"]
    experiment = facts.get("experiment")
    roots: Mapping[str, str] = facts["node_roots"]  # node index (str) -> host image folder
    names = frozenset(facts["image_names"])  # file names of every node's images
    for i in range(n):
        own = volumes.get(f"node-{i}-private", {})
        private = [p for p, info in own.items() if is_private(p, info)]
        if not private:
            problems.append(f"node-{i}-private holds no private prompt")
        wrong = [p for p in private if not p.startswith(f"{experiment}/client-{i}/")]
        if wrong:
            problems.append(f"node-{i}-private holds prompts of another client: {wrong}")
        if not any(is_features(info) for info in volumes.get(f"node-{i}-features", {}).values()):
            problems.append(f"node-{i}-features holds no feature cache")
    for vol, files in volumes.items():
        for path, info in files.items():
            if is_private(path, info) and not re.fullmatch(r"node-\d+-private", vol):
                problems.append(f"private prompt {path} in volume {vol}")
            if is_features(info) and not re.fullmatch(r"node-\d+-features", vol):
                problems.append(f"feature cache {path} in volume {vol}")
            if is_dataset_image(path, names):
                problems.append(f"image {path} in volume {vol}")
    for service, info in containers.items():
        for path in info.get("added", []):
            if is_private(path):
                problems.append(f"private prompt {path} in container {service}'s own layer")
            if service in SERVER_SERVICES and (
                is_dataset_image(path, names) or path.endswith(".safetensors")
            ):
                problems.append(f"{path} in server container {service}'s own layer")
        problems += _mount_problems(service, info.get("mounts", []), roots)
    for i in range(n):
        if f"superexec-clientapp-{i}" not in containers:
            problems.append(f"no container for superexec-clientapp-{i}")
    for service in SERVER_SERVICES:
        if service not in containers:
            problems.append(f"no container for {service}")
    return problems


def _mount_problems(
    service: str, mounts: Sequence[Mapping[str, Any]], roots: Mapping[str, str]
) -> list[str]:
    problems = []
    own = re.fullmatch(r"superexec-clientapp-(\d+)", service)
    by_dest = {m.get("Destination"): m for m in mounts}
    for index, root in roots.items():
        for m in mounts:
            if m.get("Source") == root and not (own and own[1] == index):
                problems.append(f"{service} mounts node {index}'s image folder {root}")
    if own:
        m = by_dest.get("/data/images")
        if m is None or m.get("Source") != roots.get(own[1]):
            problems.append(f"{service} does not mount its own image folder at /data/images")
        elif m.get("RW"):
            problems.append(f"{service} mounts its image folder read-write")
    elif "/data/images" in by_dest:
        problems.append(f"{service} mounts /data/images")
    return problems


def check_run(facts: Mapping[str, Any], n: int, rounds: int) -> list[str]:
    """Problems with the run itself and the unregistered node (empty: none)."""
    problems = []
    run = facts.get("run", {})
    if run.get("returncode") != 0:
        problems.append(f"flwr run exited with {run.get('returncode')}")
    rows = run.get("metrics", [])
    if [r.get("round") for r in rows] != list(range(1, rounds + 1)):
        problems.append(f"metrics rounds {[r.get('round') for r in rows]}, expected 1..{rounds}")
    for r in rows:
        if r.get("clients_ok") != n or r.get("clients_failed") or r.get("replies_rejected"):
            problems.append(f"round {r.get('round')}: not all {n} clients ok: {r}")
        if r.get("reply_array_keys") != ["shared_ctx"]:
            problems.append(f"round {r.get('round')}: replies carried {r.get('reply_array_keys')}")
    if not run.get("summary"):
        problems.append("no summary.json")
    intruder = facts.get("intruder", {})
    if intruder.get("returncode") in (0, None):
        problems.append("the unregistered SuperNode was not refused (exit 0 or not run)")
    if "Failed to activate SuperNode" not in intruder.get("output", ""):
        problems.append("the unregistered SuperNode did not report 'Failed to activate SuperNode'")
    if not intruder.get("superlink_refused"):
        problems.append("the SuperLink did not log the unknown public key")
    return problems
