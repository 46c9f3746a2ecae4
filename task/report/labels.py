"""What a run is: its setup key, federation label and the identity of its model and data."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from task.config import NON_SETUP_KEYS as CONFIG_NON_SETUP_KEYS
from task.hashing import file_sha256
from task.methods import get_method
from task.report.runs import Run, with_defaults

# Keys that do not define a setup (they vary within a table, or only say where things live):
# declared per key in task/config (``setup=False``).
NON_SETUP_KEYS = CONFIG_NON_SETUP_KEYS
NON_SETUP_PREFIXES = ("run.", "cache.", "client.")
DATASET_TITLES = {
    "ucmerced": "Fed-UCMerced",
    "aid": "Fed-AID",
    "nwpu-resisc45": "Fed-NWPU",
    "optimal-31": "Fed-Optimal",
    "eurosat": "Fed-EuroSAT",
}
# Context width W of known hub backbones (the shared prompt is h x W numbers).
KNOWN_WIDTHS = {"openai/clip-vit-base-patch16": 512, "openai/clip-vit-base-patch32": 512}


def is_setup_key(key: str) -> bool:
    """Whether a config key is part of what makes a setup (a table of its own)."""
    return key not in NON_SETUP_KEYS and not key.startswith(NON_SETUP_PREFIXES)


def norm(value: Any) -> Any:
    """Absolute paths compared in normal form (/a/main/../shared == /a/shared)."""
    if isinstance(value, str) and value.startswith("/"):
        return os.path.normpath(value)
    return value


def setup_key(cfg: Mapping[str, Any]) -> str:
    """Canonical JSON of the setup-defining keys of a (filled) config."""
    kept = {k: norm(v) for k, v in sorted(cfg.items()) if is_setup_key(k)}
    return json.dumps(kept, sort_keys=True, default=str)


def dataset_title(dataset: Any) -> str:
    """``ucmerced`` -> ``Fed-UCMerced`` (unknown names as they are)."""
    return DATASET_TITLES.get(str(dataset), str(dataset))


def split_label(cfg: Mapping[str, Any]) -> str:
    """e.g. ``Dir(0.1)``; a non-default partition seed (``data.seed``) is its own split, since
    it draws other clients and other test images (``Dir(0.1) part. 1``)."""
    c = with_defaults(cfg)
    part = c["data.partitioner"]
    if part == "dirichlet":
        label = f"Dir({c['data.alpha']})"
    elif part == "pathological":
        label = f"{c['data.classes-per-client']} classes/client"
    else:
        label = str(part)
    data_seed = int(c["data.seed"] or 0)
    return f"{label} part. {data_seed}" if data_seed else label


def federation_label(cfg: Mapping[str, Any]) -> str:
    """e.g. ``Fed-UCMerced 10c even`` or ``cross ucmerced:5+aid:5 Dir(0.1)``."""
    c = with_defaults(cfg)
    cross = str(c["data.cross"] or "")
    if cross:
        base = "cross " + cross.replace(",", "+")
    else:
        base = f"{dataset_title(c['data.dataset'])} {c['data.num-clients']}c"
    return f"{base} {split_label(c)}"


def backbone_identity(run: Run, _cache: dict[str, str] = {}) -> str:  # noqa: B006
    """A recorded identity (summary/config), else sha256 of local weights, else 'not recorded'."""
    for src in (run.summary or {}, run.config):
        for key in ("backbone_identity", "model.identity", "backbone"):
            if src.get(key):
                return f"{src[key]} (recorded)"
    name = str(run.settings["model.name"])
    if name not in _cache:
        weights = Path(name) / "model.safetensors"
        if weights.is_file():
            _cache[name] = f"model.safetensors sha256 {file_sha256(weights)[:16]} (read now)"
        else:
            _cache[name] = "not recorded"
    return _cache[name]


def data_identity(cfg: Mapping[str, Any]) -> str:
    """data.root (or hub id) and, when ``<root>.sha256`` exists, a hash of that manifest."""
    c = with_defaults(cfg)
    parts = []
    roots = str(c["data.cross-roots"] or "") or str(c["data.root"] or "")
    for root in [r.split("=", 1)[-1] for r in roots.split(",") if r] or [
        str(c["data.hub-id"] or c["data.dataset"])
    ]:
        root = norm(root)
        manifest = Path(root.rstrip("/") + ".sha256")
        extra = f" (manifest sha256 {file_sha256(manifest)[:16]})" if manifest.is_file() else ""
        parts.append(f"`{root}`{extra}")
    return ", ".join(parts)


def context_width(model_name: str) -> int | None:
    """W of a hub id we know, or of a local model directory's text config (None: unknown)."""
    if model_name in KNOWN_WIDTHS:
        return KNOWN_WIDTHS[model_name]
    path = Path(model_name) / "config.json"
    if path.is_file():
        try:
            return int(json.loads(path.read_text())["text_config"]["hidden_size"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError):
            return None
    return None


def registry_params(run: Run) -> int | None:
    """Shared numbers per round from the method registry (None when it needs the model)."""
    try:
        method = get_method(run.method)
    except ValueError:
        return None
    settings = run.settings
    width = context_width(str(settings["model.name"]))
    if width is None:
        return None
    return method.params_per_round(int(settings["prompt.n-ctx"]), width)
