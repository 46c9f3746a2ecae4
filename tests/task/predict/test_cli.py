"""fedrsclip-predict / fedrsclip-export on a run directory built the way the apps write it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from task.config import AppConfig, ClientSection, parse_run_config
from task.local.private_store import PrivateStore
from task.predict.cli import RunLoadError, export_main, load_run_model, main, predict_main
from task.runs.run_dir import RunDir
from testkit.images import TINY_CLASSES, write_synthetic_images
from testkit.models import save_tiny_clip
from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[3]


def make_run(
    tmp: Path,
    model_dir: Path,
    data_root: Path,
    method: str = "fedrsclip",
    manifest: bool = True,
    clients: int = 2,
    extra: dict | None = None,
) -> tuple[Path, str]:
    """runs/<name>/ with config, state, checkpoints r0..r2, metrics; private stores at r1, r2."""
    core = parse_run_config(
        {
            "model.name": str(model_dir),
            "model.device": "cpu",
            "method.name": method,
            "loss.ot-iters": 50,
            "data.dataset": "imagefolder",
            "data.root": str(data_root),
            "data.num-clients": clients,
            **(extra or {}),
        }
    )
    app = AppConfig(core, client=ClientSection(private_dir=str(tmp / "private")))
    run = RunDir.open(tmp / "runs", "demo", app.to_flat(), resume=False)
    g = torch.Generator().manual_seed(0)
    width = json.loads((model_dir / "config.json").read_text())["text_config"]["hidden_size"]
    for r in range(3):
        run.save_checkpoint(r, {"shared_ctx": torch.randn(4, width, generator=g) * 0.5})
        if r:
            run.append_metrics({"round": r, "personalised_accuracy": 0.5})
            for c in range(clients):
                store = PrivateStore(tmp / "private", run.experiment_id, c)
                store.save(torch.randn(4, width, generator=g), r)
                store.save_mix(r, 0.25 * (c + 1))  # the θ a client's evaluation keeps
    if manifest:
        (run.root / "partition.json").write_text(json.dumps({"class_names": TINY_CLASSES}))
    return run.root, run.experiment_id


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = write_synthetic_images(tmp_path / "images", TINY_CLASSES, per_class=4)
    return root


@pytest.fixture
def run_dir(tmp_path: Path, tiny_clip_dir: Path, images: Path) -> Path:
    return make_run(tmp_path, tiny_clip_dir, images)[0]


def _json(capsys, argv: list[str], entry=predict_main) -> dict:
    assert entry(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _same(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert [p["image"] for p in a["predictions"]] == [p["image"] for p in b["predictions"]]
    for pa, pb in zip(a["predictions"], b["predictions"], strict=True):
        assert [t["class"] for t in pa["top_k"]] == [t["class"] for t in pb["top_k"]]
        for ta, tb in zip(pa["top_k"], pb["top_k"], strict=True):
            assert abs(ta["probability"] - tb["probability"]) <= tol


def test_load_run_model_reads_the_final_round(run_dir, tmp_path):
    ckpt = RunDir(run_dir, "x").load_checkpoint(2)["shared_ctx"]
    model = load_run_model(run_dir, client=1)
    assert torch.equal(model.shared_ctx, ckpt)
    assert model.class_names == TINY_CLASSES
    assert model.info["round"] == 2 and model.info["client"] == 1
    assert model.info["private_round"] == 2
    store_dir = Path(model.info["private_store"])
    assert store_dir.name == "client-1"
    by_dir = load_run_model(run_dir, private_store=store_dir)
    by_file = load_run_model(run_dir, private_store=store_dir / "private-r00002.safetensors")
    assert torch.equal(by_dir.private_ctx, model.private_ctx)
    assert torch.equal(by_file.private_ctx, model.private_ctx)
    older = load_run_model(run_dir, client=1, round_=1)
    assert older.info["round"] == 1 and older.info["private_round"] == 1
    assert load_run_model(run_dir).private_ctx is None


def test_load_run_model_errors(run_dir, tmp_path, tiny_clip_dir, images):
    with pytest.raises(RunLoadError, match="config.json is missing"):
        load_run_model(tmp_path)
    with pytest.raises(RunLoadError, match="no private prompt for client 7"):
        load_run_model(run_dir, client=7)
    other = tmp_path / "pfl"
    root, _ = make_run(other, tiny_clip_dir, images, method="promptfl")
    with pytest.raises(RunLoadError, match="has no private prompt"):
        load_run_model(root, client=0)


def test_class_names_rebuilt_from_data_without_manifest(tmp_path, tiny_clip_dir, images):
    root, _ = make_run(tmp_path, tiny_clip_dir, images, manifest=False)
    assert sorted(load_run_model(root).class_names) == sorted(TINY_CLASSES)


def test_export_then_predict_equals_predict_from_run(run_dir, images, tmp_path, capsys):
    out = tmp_path / "export-c0"
    assert export_main(["--run", str(run_dir), "--client", "0", "--out", str(out)]) == 0
    assert "personalised model for client 0" in capsys.readouterr().err
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["model"]["client"] == 0 and meta["model"]["round"] == 2
    common = [str(images), "--format", "json", "--top-k", "3", "--batch-size", "7"]
    from_export = _json(capsys, ["--export", str(out), *common])
    from_run = _json(capsys, ["--run", str(run_dir), "--client", "0", *common])
    assert from_export["num_predicted"] == from_run["num_predicted"] == 20
    _same(from_export, from_run)
    # the global model is a different classifier
    global_ = _json(capsys, ["--run", str(run_dir), *common])
    assert global_["model"]["personalised"] is False
    probs = [t["probability"] for p in global_["predictions"] for t in p["top_k"]]
    assert probs != [t["probability"] for p in from_run["predictions"] for t in p["top_k"]]


def test_global_export_equals_global_run(run_dir, images, tmp_path, capsys):
    out = tmp_path / "export-global"
    assert main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    common = [str(images / "river"), str(images / "port" / "port_00.png"), "--format", "json"]
    _same(
        _json(capsys, ["predict", "--export", str(out), *common], entry=main),
        _json(capsys, ["predict", "--run", str(run_dir), *common], entry=main),
    )


def test_table_csv_and_unreadable_images(run_dir, images, tmp_path, capsys):
    (images / "beach" / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    args = ["--run", str(run_dir), "--client", "1", str(images / "beach"), "--top-k", "2"]
    assert predict_main(args) == 0
    io_ = capsys.readouterr()
    lines = io_.out.splitlines()
    assert lines[0].split() == ["image", "top-1", "p", "top-2", "p"]
    assert len(lines) == 1 + 4 and all(Path(line.split()[0]).is_file() for line in lines[1:])
    assert "corrupt.jpg" in io_.err and "4 image(s) predicted, 1 unreadable skipped" in io_.err
    assert predict_main([*args, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 8 and [r["rank"] for r in rows[:2]] == ["1", "2"]
    assert all(r["class"] in TINY_CLASSES and 0 <= float(r["probability"]) <= 1 for r in rows)
    out_file = tmp_path / "preds.json"
    assert predict_main([*args, "--format", "json", "-o", str(out_file)]) == 0
    doc = json.loads(out_file.read_text())
    assert doc["num_skipped"] == 1 and doc["skipped"][0]["image"].endswith("corrupt.jpg")


def test_nothing_readable_and_missing_inputs(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"nope")
    assert predict_main(["--run", str(run_dir), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "0 image(s) predicted, 1 unreadable skipped: " in err
    assert "error: none of the 1 input image(s) could be read" in err
    assert predict_main(["--run", str(run_dir), str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert predict_main(["--run", str(run_dir), str(tmp_path / "runs")]) == 2
    assert "no image files found" in capsys.readouterr().err


@pytest.mark.slow
def test_nothing_readable_exits_non_zero_from_the_command_line(run_dir, tmp_path):
    """The installed entry points and `python -m` pass the exit code on (scripts rely on it)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"nope")
    cmd = [sys.executable, "-m", "task.predict.cli", "predict", "--run", str(run_dir), str(bad)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "0 image(s) predicted, 1 unreadable skipped" in proc.stderr
    assert proc.stdout == ""


def test_backbone_mismatch_errors_unless_allowed(run_dir, images, tmp_path, capsys):
    out = tmp_path / "exp"
    assert export_main(["--run", str(run_dir), "--out", str(out)]) == 0
    other = save_tiny_clip(tmp_path / "other-tiny", seed=1)
    args = ["--export", str(out), "--model", str(other), str(images / "farm")]
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    assert "backbone identity" in err and "--allow-backbone-mismatch" in err
    assert predict_main([*args, "--allow-backbone-mismatch"]) == 0
    assert "WARNING: backbone identity" in capsys.readouterr().err
    # the same weights copied elsewhere are the same backbone
    same = save_tiny_clip(tmp_path / "copy-tiny", seed=0)
    assert predict_main(["--export", str(out), "--model", str(same), str(images / "farm")]) == 0


def test_export_refuses_to_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert export_main(["--run", str(run_dir), "--out", str(out)]) == 0
    assert export_main(["--run", str(run_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert export_main(["--run", str(run_dir), "--out", str(out), "--force"]) == 0


UCM = SHARED / "data" / "ucmerced"


@pytest.mark.integration
@pytest.mark.parametrize("model", ["rs-lit-b0-minilm", "rs-tinyclip-aid"])
def test_ucmerced_export_equals_run(tmp_path, capsys, model):
    """Export and run path agree on the stand-in (VisionTextDualEncoder) and the CLIPModel one."""
    RS_MODEL = SHARED / "models" / model
    if not (UCM.is_dir() and RS_MODEL.is_dir()):
        pytest.skip(f"needs ../shared/models/{model} and ../shared/data/ucmerced")
    imgs = tmp_path / "ucm"
    for cls in ("agricultural", "beach", "harbor", "runway"):
        (imgs / cls).mkdir(parents=True)
        for src in sorted((UCM / cls).iterdir())[:3]:
            (imgs / cls / src.name).symlink_to(src)
    root, _ = make_run(tmp_path, RS_MODEL, UCM, clients=2, manifest=False)
    out = tmp_path / "export"
    assert export_main(["--run", str(root), "--client", "1", "--out", str(out)]) == 0
    common = [str(imgs), "--format", "json", "--top-k", "5"]
    a = _json(capsys, ["--export", str(out), *common])
    b = _json(capsys, ["--run", str(root), "--client", "1", *common])
    assert a["num_predicted"] == 12 and len(a["predictions"][0]["top_k"]) == 5
    _same(a, b)
