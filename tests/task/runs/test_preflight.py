"""task.runs.preflight: each check passes or fails with the key to fix, in order, without
training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from task.config import parse_app_config
from task.data import DataError
from task.model.backbone import BackboneNotFoundError
from task.runs.preflight import PreflightError, check_data, check_model, key_to_fix, run_preflight
from testkit.images import write_synthetic_images

REPO = Path(__file__).resolve().parents[3]
FOLDERS = ["01_Grassland", "02_Farmland", "03_Industrial", "04_RiverLake"]
MAPPING = "01_Grassland=grassland,02_Farmland=farmland,03_Industrial=industrial,04_RiverLake=lake"


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    return write_synthetic_images(tmp_path / "scenes", FOLDERS, per_class=4, size=8)


def app(root: Path, model: Path | str = "unused", **data) -> object:
    flat = {
        "model.name": str(model),
        "data.dataset": "imagefolder",
        "data.root": str(root),
        "data.num-clients": 2,
        **{f"data.{k.replace('_', '-')}": v for k, v in data.items()},
    }
    return parse_app_config(flat)


def names(checks) -> list[tuple[str, bool]]:
    return [(c.name, c.ok) for c in checks]


def test_all_checks_pass_with_the_mapping(scenes: Path, tiny_clip_dir: Path) -> None:
    report = run_preflight(app(scenes, tiny_clip_dir, class_names=MAPPING))
    assert report.ok and report.failure is None
    assert names(report.checks) == [
        ("data root", True),
        ("class mapping", True),
        ("images per class", True),
        ("federation", True),
        ("model", True),
    ]
    text = report.format()
    assert "01_Grassland -> grassland" in text and "16 images, 4 classes, 4..4 per class" in text
    assert "2 clients (even)" in text and "clip (CLIPModel)" in text
    report.raise_first()  # nothing to raise


def test_prefixed_folders_fail_at_the_mapping_and_skip_the_model(scenes: Path) -> None:
    report = run_preflight(app(scenes, class_names="grassland,farmland,industrial,lake"))
    assert names(report.checks) == [("data root", True), ("class mapping", False)]
    failure = report.failure
    assert failure is not None and failure.key == "data.class-names"
    # entries that fix it: guessed behind the index prefix where the name matches a class
    assert "'01_Grassland=grassland,02_Farmland=farmland," in failure.detail
    assert "04_RiverLake=<prompt words>'" in failure.detail
    assert "key to fix: data.class-names" in report.format()
    with pytest.raises(DataError, match="match no entry of data.class-names"):
        report.raise_first()


def test_the_failing_data_path_does_not_import_torch(scenes: Path) -> None:
    """The launcher's preflight reports a data mistake, or a model directory that is not there,
    without torch/transformers start-up."""
    code = (
        "import sys\n"
        "from task.config import parse_app_config\n"
        "from task.runs.preflight import run_preflight\n"
        f"cfg = parse_app_config({{'data.dataset': 'imagefolder', 'data.root': {str(scenes)!r},"
        " 'data.class-names': 'grassland,farmland,industrial,lake', 'data.num-clients': 2})\n"
        "report = run_preflight(cfg)\n"
        f"model = check_model({str(scenes / 'no-model')!r}, quick=True)\n"
        "print(report.ok, model.ok, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    code = code.replace("import run_preflight", "import check_model, run_preflight")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False", "False", "False"], out.stderr


@pytest.mark.parametrize(
    ("setup", "check", "key", "match"),
    [
        ("missing root", "data root", "data.root", "does not exist"),
        ("empty class", "images per class", "data.root", "contain no images"),
        ("class without folder", "images per class", "data.class-names", r"\['beach'\]"),
        ("too many clients", "federation", "data.num-clients", "num-clients"),
        ("bad entry", "class mapping", "data.class-names", "do not exist"),
    ],
)
def test_data_failures_name_the_check_and_key(
    scenes: Path, setup: str, check: str, key: str, match: str
) -> None:
    kw: dict = {"class_names": MAPPING}
    root = scenes
    if setup == "missing root":
        root = scenes.parent / "nowhere"
    elif setup == "empty class":
        (scenes / "05_Beach").mkdir()
        kw["class_names"] = MAPPING + ",05_Beach=beach"
    elif setup == "class without folder":
        kw["class_names"] = MAPPING + ",beach"
    elif setup == "too many clients":
        kw["num_clients"] = 9
    elif setup == "bad entry":
        kw["class_names"] = MAPPING.replace("01_Grassland", "01_Grass")
    checks = check_data(app(root, **kw).core.data)
    failure = checks[-1]
    assert (failure.name, failure.ok, failure.key) == (check, False, key)
    assert all(c.ok for c in checks[:-1])
    import re

    assert re.search(match, failure.detail), failure.detail


def test_folder_names_with_numbers_get_a_note(scenes: Path) -> None:
    (mapping,) = [c for c in check_data(app(scenes).core.data) if c.name == "class mapping"]
    assert mapping.ok and "01_Grassland -> 01 grassland" in mapping.detail
    assert "folder=words" in mapping.detail


def test_local_partitioner_checks_the_config_only() -> None:
    cfg = parse_app_config(
        {"data.dataset": "imagefolder", "data.partitioner": "local", "data.class-names": MAPPING}
    )
    (check,) = check_data(cfg.core.data)
    assert check.ok and "4 classes" in check.detail and "data-root" in check.detail


@pytest.mark.parametrize("quick", [False, True])
def test_model_checks(tmp_path: Path, tiny_clip_dir: Path, quick: bool) -> None:
    assert check_model(quick=quick, name=str(tiny_clip_dir)).ok
    missing = check_model(quick=quick, name=str(tmp_path / "no-model"))
    assert not missing.ok and missing.key == "model.name"
    assert "does not exist" in missing.detail
    assert isinstance(missing.error, PreflightError if quick else BackboneNotFoundError)

    from transformers import BertConfig

    bert = tmp_path / "bert"
    BertConfig().save_pretrained(bert)
    wrong = check_model(quick=quick, name=str(bert))
    assert not wrong.ok and "'bert'" in wrong.detail and isinstance(wrong.error, PreflightError)

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_clip_dir / "config.json").read_text())
    (partial / "model.safetensors").write_bytes(b"")
    lacking = check_model(quick=quick, name=str(partial))
    assert not lacking.ok and "tokenizer" in lacking.detail and "image processor" in lacking.detail

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_clip_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "preprocessor_config.json").write_text("{not json")
    bad = check_model(quick=quick, name=str(broken))
    assert not bad.ok and "preprocessor_config.json is not valid JSON" in bad.detail


def test_key_to_fix_prefers_the_fix() -> None:
    msg = "data.root x has 3 images. Fix: lower data.num-clients or add images"
    assert key_to_fix(msg, "data.root") == "data.num-clients"
    assert key_to_fix("no key here", "model.name") == "model.name"
    assert json.dumps(key_to_fix("see data.class-names", "x")) == '"data.class-names"'
