"""Preflight: everything a run can be checked for without training, in seconds, before it starts.

The launcher (launcher.cli) runs it before `flwr run`, so a mistyped path or class name fails
in seconds with the key to fix instead of half a minute into a simulation; the ServerApp runs it
again before round 1 (server_app.loop.preflight), which also covers a plain `flwr run`.

Checks, in order (the first failure ends the preflight):

1. ``data root``: the root (or each cross-dataset root) exists and lists class folders;
2. ``class mapping``: every folder maps to one class of data.class-names (folder=words entries);
3. ``images per class``: every folder holds images and every class gets a folder;
4. ``federation``: headers are read (data.verify) and the clients and splits can be built;
5. ``model``: model.name resolves, its config is of a supported family, and the tokenizer,
   image-processor and weight files are there (no weights are loaded).

Pure Python, no Flower. torch and transformers are imported only by the model check, which runs
last, so a data mistake is reported without paying their start-up.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from task.config import DataConfig
from task.data.classnames import humanize, match_folders
from task.data.errors import DataError
from task.data.federation import build_federation, relabel
from task.data.sources import Listing, list_class_folders, load_listing

if TYPE_CHECKING:
    from task.config import AppConfig
    from task.data.federation import Federation

# Model families the backbone loader handles (CLIPModel, VisionTextDualEncoderModel, SiglipModel).
SUPPORTED_MODEL_TYPES = ("clip", "siglip", "vision-text-dual-encoder")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
_JSON_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    *PROCESSOR_FILES,
)
_KEY = re.compile(r"\b(?:data|model|server|train|method|run|client|cache|prompt|loss)\.[a-z-]+")


class PreflightError(ValueError):
    """A preflight check failed for a reason no more specific error type covers."""


@dataclass
class Check:
    """One preflight check: what was checked, the run-config key to fix, and what was found."""

    name: str
    key: str
    ok: bool
    detail: str
    seconds: float = 0.0
    error: Exception | None = field(default=None, repr=False, compare=False)

    def line(self) -> str:
        """``ok   data root   ...`` or ``FAIL ...`` plus the key to fix."""
        text = f"  {'ok  ' if self.ok else 'FAIL'} {self.name:<17} {self.detail}"
        return text if self.ok else f"{text}\n       key to fix: {self.key}"


@dataclass
class PreflightReport:
    """The checks that ran, in order; a failure is the last of them."""

    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def format(self) -> str:
        seconds = sum(c.seconds for c in self.checks)
        head = "preflight ok" if self.ok else "preflight FAILED"
        return "\n".join([f"{head} ({seconds:.1f}s):", *(c.line() for c in self.checks)])

    def raise_first(self) -> None:
        """Re-raise the failing check's own error (DataError, BackboneNotFoundError, ...)."""
        failure = self.failure
        if failure is not None:
            raise failure.error or PreflightError(failure.detail)


def key_to_fix(message: str, default: str) -> str:
    """The run-config key an error's "Fix:" names (else the first key it names, else default)."""
    _, _, fix = message.partition("Fix:")
    found = _KEY.search(fix) or _KEY.search(message)
    return found.group(0) if found else default


def _step(checks: list[Check], name: str, key: str, fn: Callable[[], str]) -> bool:
    """Run one check; a DataError/ValueError/OSError becomes a failed Check naming a key."""
    t0 = time.perf_counter()
    try:
        detail = fn()
    except (DataError, ValueError, OSError) as err:
        seconds = time.perf_counter() - t0
        checks.append(Check(name, key_to_fix(str(err), key), False, str(err), seconds, err))
        return False
    checks.append(Check(name, key, True, detail, time.perf_counter() - t0))
    return True


def _preview(pairs: list[str], n: int = 4) -> str:
    return ", ".join(pairs[:n]) + (f", ... ({len(pairs)} in all)" if len(pairs) > n else "")


def check_data(
    cfg: DataConfig, build: Callable[[DataConfig], Federation] | None = None
) -> list[Check]:
    """Checks 1-4 on the data section; ``build`` makes the federation (the ServerApp passes its
    cached task.data.source.get_federation so the listing is not repeated for round 1)."""
    names = cfg.class_name_list()
    if cfg.partitioner == "local":
        detail = (
            f"{len(names)} classes from data.class-names; data.partitioner=local: each node "
            "checks its own folder (node config data-root) when it starts"
        )
        return [Check("data", "data.class-names", True, detail)]
    data = _DataChecks(cfg, names, build or build_federation)
    checks: list[Check] = []
    root_key = "data.cross-roots" if data.cross else "data.root"
    if not _step(checks, "data root", root_key, data.list_roots):
        return checks
    if not data.cross and not _step(checks, "class mapping", "data.class-names", data.map_folders):
        return checks
    if not _step(checks, "images per class", root_key, data.count_images):
        return checks
    _step(checks, "federation", "data.num-clients", data.federate)
    return checks


class _DataChecks:
    """The data checks in order; each returns its detail line or raises (listings are shared:
    the folders are listed once)."""

    def __init__(
        self, cfg: DataConfig, names: list[str], build: Callable[[DataConfig], Federation]
    ) -> None:
        self.cfg, self.names, self.build = cfg, names, build
        self.cross = bool(cfg.cross)
        roots = cfg.cross_root_map()
        groups = [(n, roots.get(n, "")) for n, _ in cfg.cross_groups()] if self.cross else []
        self.groups = groups or [(cfg.dataset, cfg.root)]
        self.folders: dict[str, list[str]] = {}
        self.listings: dict[str, Listing] = {}

    def list_roots(self) -> str:
        found = []
        for name, root in self.groups:
            if root:
                path, self.folders[name] = list_class_folders(root)
                found.append(f"{path}: {len(self.folders[name])} class folders")
            else:  # a hub dataset: written out once under data.cache-dir, then listed
                hub = self.cfg.hub_id if not self.cross else ""
                self.listings[name] = load_listing(name, "", hub, self.cfg.cache_dir)
                self.folders[name] = self.listings[name].folders
                found.append(
                    f"{self.listings[name].root} (hub copy): {len(self.folders[name])} classes"
                )
        return "; ".join(found)

    def map_folders(self) -> str:
        ((name, _),) = self.groups
        if not self.names:
            derived = [humanize(f, name) for f in self.folders[name]]
            dupes = sorted({n for n in derived if derived.count(n) > 1})
            if dupes:
                raise DataError(
                    f"class folders give duplicate class names {dupes}. Fix: merge or rename "
                    "those folders, or name each folder's class in data.class-names "
                    "(folder=words entries)"
                )
            pairs = [f"{f} -> {n}" for f, n in zip(self.folders[name], derived, strict=True)]
            note = ""
            if any(n[:1].isdigit() for n in derived):  # "01_Grassland": prompts would say "01"
                note = (
                    "; note: prompts will carry the folders' numbers, name the classes with "
                    "data.class-names folder=words entries (e.g. '01_Grassland=grassland')"
                )
            return f"{len(derived)} classes from folder names ({_preview(pairs)}){note}"
        to_index = match_folders(self.folders[name], self.names, name, self.cfg.class_folder_map())
        pairs = [f"{f} -> {self.names[i]}" for f, i in to_index.items()]
        return f"{len(to_index)} folders -> {len(self.names)} classes ({_preview(pairs)})"

    def count_images(self) -> str:
        found = []
        for name, root in self.groups:
            if name not in self.listings:
                self.listings[name] = load_listing(name, root, "", self.cfg.cache_dir)
            listing = self.listings[name]
            labels = [r.label for r in listing.records]
            if self.names and not self.cross:
                records, _ = relabel(listing, self.cfg)
                labels = [r.label for r in records]
            counts = [labels.count(i) for i in range(max(labels) + 1)]
            found.append(
                f"{name}: {len(labels)} images, {len(counts)} classes, "
                f"{min(counts)}..{max(counts)} per class"
            )
        return "; ".join(found)

    def federate(self) -> str:
        fed = self.build(self.cfg)
        train = [len(c.train) for c in fed.clients]
        test = [len(c.test) for c in fed.clients]
        skipped = f", {fed.skipped_corrupt} corrupt skipped" if fed.skipped_corrupt else ""
        return (
            f"{len(fed.clients)} clients ({self.cfg.partitioner}), "
            f"train {min(train)}..{max(train)}, "
            f"{'val' if self.cfg.holdout == 'val' else 'test'} {min(test)}..{max(test)} "
            f"images each{skipped}"
        )


def check_model(name: str, quick: bool = False) -> Check:
    """Check 5: the model resolves and is complete, without loading its weights.

    ``quick`` (the launcher) first checks a local directory's files without importing torch or
    transformers, so a wrong path or an incomplete copy fails in well under a second.
    """
    checks: list[Check] = []
    _step(checks, "model", "model.name", lambda: _inspect_model(name, quick))
    (check,) = checks
    check.key = "model.name"  # whatever the message mentions, model.name is what to change
    return check


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (the rule of task.model.backbone._resolve_source)."""
    return (
        Path(name).expanduser().is_dir()
        or name.startswith((".", "/", "~"))
        or (name.count("/") > 1)
    )


def _inspect_model(name: str, quick: bool = False) -> str:
    if quick and _looks_local(name):
        _check_files(Path(name).expanduser(), name)
    from transformers import AutoConfig

    from task.model.backbone import _resolve_source  # missing directory / config.json: its errors

    source = _resolve_source(name)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise PreflightError(
            f"model.name={name!r}: its config cannot be read ({type(err).__name__}: {err}). "
            "Fix: set model.name to a directory saved with save_pretrained, or to a hub id; "
            "offline, download it where you have network (`hf download <id> --local-dir "
            "models/<name>`) and pass that directory"
        ) from err
    model_type = str(getattr(config, "model_type", ""))
    arch = ", ".join(getattr(config, "architectures", None) or []) or "no architectures listed"
    _check_type(name, model_type, arch)
    path = Path(source)
    if not path.is_dir():
        return f"hub id {name}: {model_type} ({arch})"
    _check_files(path, name)
    return f"{source}: {model_type} ({arch}), tokenizer and image processor files present"


def _check_type(name: str, model_type: str, arch: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise PreflightError(
            f"model.name={name!r} is a {model_type!r} model ({arch}), not a vision-language "
            f"dual encoder this app loads. Fix: use a model of type {list(SUPPORTED_MODEL_TYPES)}"
            " (e.g. openai/clip-vit-base-patch16)"
        )


def _check_files(path: Path, name: str) -> None:
    """A local model directory holds a readable config of a supported type, weights, tokenizer
    and image-processor files (read as files only: no torch, no transformers)."""
    if not path.is_dir():
        raise PreflightError(
            f"model directory {name!r} does not exist. Fix: set model.name to an existing local "
            "directory (saved with save_pretrained) or a hub id such as "
            "'openai/clip-vit-base-patch16'"
        )
    for file in ("config.json", *_JSON_FILES):
        if (path / file).is_file():
            try:
                json.loads((path / file).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as err:
                raise PreflightError(
                    f"model directory {path}: {file} is not valid JSON ({err}). Fix: copy the "
                    "model directory again, or point model.name at an intact copy"
                ) from err
    if not (path / "config.json").is_file():
        raise PreflightError(
            f"model directory {str(path)!r} has no config.json. Fix: point model.name at a "
            "directory saved with save_pretrained (config, weights, tokenizer, processor files)"
        )
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    arch = ", ".join(config.get("architectures") or []) or "no architectures listed"
    _check_type(name, str(config.get("model_type", "")), arch)
    missing = []
    if not any(any(path.glob(g)) for g in WEIGHT_GLOBS):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"tokenizer (one of {list(TOKENIZER_FILES)})")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        missing.append(f"image processor (one of {list(PROCESSOR_FILES)})")
    if missing:
        raise PreflightError(
            f"model directory {path} lacks {'; '.join(missing)}. Fix: save the model with "
            "save_pretrained together with its tokenizer and processor (or download the whole "
            "hub repository), and point model.name at that directory"
        )


def run_preflight(
    cfg: AppConfig,
    build: Callable[[DataConfig], Federation] | None = None,
    model: bool = True,
) -> PreflightReport:
    """Data checks, then the model check (skipped when the data already failed)."""
    checks = check_data(cfg.core.data, build)
    if model and all(c.ok for c in checks):
        checks.append(check_model(cfg.core.model.name))
    return PreflightReport(checks)
