"""Turn a dataset (local folder or hub id) into a sorted list of ImageRecords.

A local `<root>/<class>/<image>` tree is listed with os.scandir (no decoding). A hub dataset is
loaded once with `datasets.load_dataset` and written out as such a tree under the cache dir,
so every later step (records, feature cache, manifests) works on plain files offline.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from task.data.classnames import humanize
from task.data.errors import DataError
from task.data.records import ImageRecord
from task.data.registry import get_spec

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})


@dataclass
class Listing:
    """One dataset on disk: class folders (sorted), their prompt words, and all records."""

    dataset: str
    root: Path
    folders: list[str]  # label i <-> folders[i]
    class_names: list[str]  # humanised folders
    records: list[ImageRecord]  # sorted by image_id


def _list_images(class_dir: Path) -> list[Path]:
    """Image files under one class folder (recursively), sorted; hidden entries ignored."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=_raise):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def _raise(err: OSError) -> None:
    raise err


def _root_key(local: bool) -> str:
    return "node config data-root" if local else "data.root (or data.cross-roots)"


def list_class_folders(root: str | os.PathLike[str], local: bool = False) -> tuple[Path, list[str]]:
    """(resolved root, sorted class folder names): the root exists, is a folder, can be listed
    and has class sub-folders; otherwise a DataError naming the key to fix. Reads no images."""
    key = _root_key(local)
    root_path = Path(root).expanduser().resolve()
    if not root_path.exists():
        raise DataError(
            f"data root {root_path} does not exist. Fix: point {key} at a folder laid out as "
            "<root>/<class>/<image>"
        )
    if not root_path.is_dir():
        raise DataError(
            f"data root {root_path} is not a directory. Fix: point {key} at "
            "the folder that contains one sub-folder per class"
        )
    try:
        class_dirs = sorted(
            (e.name for e in os.scandir(root_path) if e.is_dir() and not e.name.startswith(".")),
        )
    except PermissionError as err:
        raise DataError(
            f"cannot read {err.filename or root_path}: permission denied. Fix: "
            "make the data folder readable by this user"
        ) from err
    if not class_dirs:
        raise DataError(
            f"data root {root_path} has no class sub-folders. Fix: lay images out as "
            "<root>/<class>/<image> (one folder per class)"
        )
    return root_path, class_dirs


def scan_image_folder(root: str | os.PathLike[str], dataset: str, local: bool = False) -> Listing:
    """List `<root>/<class>/<image>`; raise DataError for missing/unreadable/empty input.

    local=True is one node's own folder (data.partitioner=local): a node may lack classes, so
    empty class folders are dropped (not an error) and the class count is not compared with the
    dataset's; the errors name the node config key data-root instead of data.root.
    """
    key = _root_key(local)
    root_path, class_dirs = list_class_folders(root, local)
    try:
        records: list[ImageRecord] = []
        files_of = {folder: _list_images(root_path / folder) for folder in class_dirs}
        empty = [folder for folder in class_dirs if not files_of[folder]]
        if local and len(empty) < len(class_dirs):
            if empty:
                log.info("%s: ignoring empty class folder(s) %s", root_path, empty)
            class_dirs = [folder for folder in class_dirs if files_of[folder]]
            empty = []
        for label, folder in enumerate(class_dirs):
            for f in files_of[folder]:
                rel = f.relative_to(root_path).as_posix()
                records.append(ImageRecord(f"{dataset}/{rel}", str(f), label))
    except PermissionError as err:
        raise DataError(
            f"cannot read {err.filename or root_path}: permission denied. Fix: "
            "make the data folder readable by this user"
        ) from err
    if len(empty) == len(class_dirs):
        raise DataError(
            f"data root {root_path} contains no images (looked for "
            f"{sorted(IMAGE_EXTENSIONS)} in {len(class_dirs)} class folders). Fix: point "
            f"{key} at the folder whose sub-folders hold the images"
        )
    if empty:
        raise DataError(
            f"class folder(s) {empty} under {root_path} contain no images. Fix: add images or "
            "remove the empty folder(s) so the label space matches the data"
        )
    spec = get_spec(dataset)
    if not local and spec.num_classes is not None and spec.num_classes != len(class_dirs):
        log.warning(
            "%s: found %d class folders under %s, expected %d",
            dataset,
            len(class_dirs),
            root_path,
            spec.num_classes,
        )
    names = [humanize(f, dataset) for f in class_dirs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(
            f"class folders under {root_path} give duplicate class names {dupes}. "
            "Fix: merge or rename those folders"
        )
    records.sort(key=lambda r: r.image_id)
    return Listing(dataset, root_path, class_dirs, names, records)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._ -]+", "_", text).strip() or "_"


def materialize_hub_dataset(hub_id: str, cache_dir: str | os.PathLike[str]) -> Path:
    """Load `hub_id` with datasets.load_dataset and write it as <class>/<file> under cache_dir.

    Idempotent: a finished copy (marked by a `.complete` file) is reused without network.
    Image bytes are copied as stored (no re-encoding), so pixels match the hub exactly.
    """
    import datasets

    target = Path(cache_dir).expanduser().resolve() / _safe_name(hub_id.replace("/", "__"))
    if (target / ".complete").exists():
        return target
    try:
        loaded: Any = datasets.load_dataset(hub_id)
    except Exception as err:  # network, auth, missing repo: all need the same fix
        raise DataError(
            f"could not load hub dataset {hub_id!r} ({type(err).__name__}: {err}). Fix: set "
            "data.root to a local <root>/<class>/<image> folder, or allow network access to "
            "the Hugging Face hub (unset HF_HUB_OFFLINE), or set data.hub-id"
        ) from err
    splits = (
        [(k, loaded[k]) for k in sorted(loaded)]
        if isinstance(loaded, dict)
        else [("train", loaded)]
    )
    features = splits[0][1].features
    image_col = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise DataError(
            f"hub dataset {hub_id!r} has no image + class-label columns (features: "
            f"{dict(features)}). Fix: use a single-label image-classification dataset id"
        )
    names: list[str] = features[label_col].names
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name in names:
        (partial / _safe_name(name)).mkdir(parents=True, exist_ok=True)
    for split, ds in splits:
        ds = ds.select_columns([image_col, label_col]).cast_column(
            image_col, datasets.Image(decode=False)
        )
        for i, row in enumerate(ds):
            img = row[image_col]
            data = img.get("bytes")
            if data is None and img.get("path"):
                data = Path(img["path"]).read_bytes()
            if data is None:
                raise DataError(f"hub dataset {hub_id!r} row {split}/{i} has no image data")
            ext = Path(img.get("path") or "").suffix.lower()
            if ext not in IMAGE_EXTENSIONS:
                ext = _sniff_extension(data)
            folder = _safe_name(names[row[label_col]])
            (partial / folder / f"{split}-{i:06d}{ext}").write_bytes(data)
    (partial / ".complete").write_text(hub_id + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def _sniff_extension(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "PNG").lower()
    except Exception:
        fmt = "bin"
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}")


def load_listing(dataset: str, root: str, hub_id: str, cache_dir: str) -> Listing:
    """Local folder if `root` is set, else the (overridden) hub id written out to the cache."""
    spec = get_spec(dataset)
    if root:
        return scan_image_folder(root, dataset)
    hub = hub_id or spec.hub_id
    if not hub:
        raise DataError(
            f"dataset {dataset!r} has no hub id. Fix: set data.root to a local "
            "<root>/<class>/<image> folder (or data.hub-id)"
        )
    return scan_image_folder(materialize_hub_dataset(hub, cache_dir), dataset)
