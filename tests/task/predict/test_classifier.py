"""Export format and inference: an export scores exactly like the prompts it came from."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from task.config import parse_run_config
from task.methods.heads import compute_logits
from task.predict.classifier import (
    BackboneMismatchError,
    check_backbone,
    classifier_from_prompts,
    export_classifier,
    freeze,
    image_processor_from_dict,
    preprocessing_dict,
)
from task.predict.exported import (
    FORMAT_VERSION,
    META_NAME,
    WEIGHTS_NAME,
    ExportedClassifier,
    ExportError,
)
from task.predict.images import find_images, predict_images
from testkit.images import TINY_CLASSES, write_synthetic_images

N_CTX, WIDTH = 4, 32  # the tiny CLIP's text width


def _prompts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_CTX, WIDTH, generator=g) * 0.5, torch.randn(N_CTX, WIDTH, generator=g)


def _cfg(**flat):
    base = {"model.device": "cpu", "loss.ot-iters": 50}
    return parse_run_config({**base, **flat})


def _image_feats(n: int = 6, p: int = 4, d: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    glob = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    patches = F.normalize(torch.randn(n, p, d, generator=g), dim=-1)
    return glob, patches


CASES = [
    ({"method.name": "fedrsclip"}, True),  # clip+ot head, personalised (S, P)
    ({"method.name": "fedrsclip"}, False),  # global model: S only, OT with M = 1
    ({"method.name": "fedrsclip", "prompt.fusion": "concat"}, True),
    ({"method.name": "fedrsclip", "loss.head": "ot"}, True),
    ({"method.name": "promptfl"}, False),  # fixed clip head
    ({"method.name": "zeroshot"}, False),  # template features, no prompts
]


@pytest.mark.parametrize("flat, personal", CASES)
def test_export_roundtrip_scores_like_the_prompts(tiny_backbone, tmp_path, flat, personal):
    cfg = _cfg(**flat)
    shared, private = _prompts()
    private = private if personal else None
    run = classifier_from_prompts(tiny_backbone, TINY_CLASSES, cfg, shared, private)
    exported = export_classifier(
        tiny_backbone, TINY_CLASSES, cfg, shared, private, tmp_path / "exp", model_name="tiny"
    )
    loaded = ExportedClassifier.load(tmp_path / "exp")
    glob, patches = _image_feats()
    reference, _ = compute_logits(
        run.head, run.feats, glob, patches, tiny_backbone.logit_scale, cfg.loss, personal
    )
    for clf in (exported, loaded):
        assert clf.needs_patches == ("ot" in run.head)
        torch.testing.assert_close(clf.logits(glob, patches), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(run.logits(glob, patches), reference, atol=0, rtol=0)
    assert loaded.class_names == TINY_CLASSES and loaded.head == run.head
    assert loaded.model["personalised"] is personal
    assert loaded.model["method"] == cfg.method.name


def test_personalised_and_global_exports_differ(tiny_backbone, tmp_path):
    cfg = _cfg()
    shared, private = _prompts()
    personal = freeze(
        classifier_from_prompts(tiny_backbone, TINY_CLASSES, cfg, shared, private),
        tiny_backbone,
        "tiny",
    )
    global_ = freeze(
        classifier_from_prompts(tiny_backbone, TINY_CLASSES, cfg, shared, None),
        tiny_backbone,
        "tiny",
    )
    assert personal.ot_prompts.shape == (len(TINY_CLASSES), 2, 16)
    assert global_.ot_prompts.shape == (len(TINY_CLASSES), 1, 16)
    # the CLIP head reads the personal feature, which is the prompt set's last member
    torch.testing.assert_close(personal.clip_text, personal.ot_prompts[:, -1])
    torch.testing.assert_close(global_.clip_text, personal.ot_prompts[:, 0])
    assert not torch.allclose(personal.clip_text, global_.clip_text)


def test_export_files_are_self_describing(tiny_backbone, tmp_path):
    cfg = _cfg(**{"loss.ot-reg": 0.05, "loss.ot-iters": 30, "loss.ot-tol": 1e-5})
    shared, private = _prompts()
    export_classifier(
        tiny_backbone,
        TINY_CLASSES,
        cfg,
        shared,
        private,
        tmp_path / "exp",
        model_name="models/tiny",
        info={"client": 3},
    )
    meta = json.loads((tmp_path / "exp" / META_NAME).read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["format"] == "fedrsclip-classifier"
    assert meta["class_names"] == TINY_CLASSES
    assert meta["head"] == "clip+ot"
    assert meta["logit_scale"] == pytest.approx(tiny_backbone.logit_scale)
    assert meta["loss"] == {"ot-reg": 0.05, "ot-iters": 30, "ot-tol": 1e-5}
    assert meta["backbone"] == {
        "name": "models/tiny",
        "identity": tiny_backbone.identity,
        "dtype": "float32",
    }
    assert meta["preprocessing"] == preprocessing_dict(tiny_backbone.image_processor)
    assert meta["preprocessing"]["crop_size"] == {"height": 32, "width": 32}
    assert meta["tensors"] == {"clip_text": [5, 16], "ot_prompts": [5, 2, 16]}
    assert meta["model"]["client"] == 3 and meta["model"]["personalised"] is True
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [META_NAME, WEIGHTS_NAME]


def test_clip_head_export_has_no_ot_tensor(tiny_backbone, tmp_path):
    shared, _ = _prompts()
    clf = export_classifier(
        tiny_backbone, TINY_CLASSES, _cfg(**{"method.name": "promptfl"}), shared, None, tmp_path
    )
    assert clf.ot_prompts is None and not clf.needs_patches
    glob, _ = _image_feats()
    assert ExportedClassifier.load(tmp_path).logits(glob, None).shape == (6, 5)


def test_save_refuses_a_non_empty_directory(tiny_backbone, tmp_path):
    shared, private = _prompts()
    args = (tiny_backbone, TINY_CLASSES, _cfg(), shared, private, tmp_path / "exp")
    export_classifier(*args)
    with pytest.raises(ExportError, match="not empty"):
        export_classifier(*args)
    export_classifier(*args, overwrite=True)


def test_load_errors_name_the_problem(tiny_backbone, tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        ExportedClassifier.load(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / META_NAME).write_text("{}")
    with pytest.raises(ExportError, match=WEIGHTS_NAME):
        ExportedClassifier.load(tmp_path / "half")
    shared, private = _prompts()
    export_classifier(tiny_backbone, TINY_CLASSES, _cfg(), shared, private, tmp_path / "v")
    meta = json.loads((tmp_path / "v" / META_NAME).read_text())
    meta["format_version"] = 99
    (tmp_path / "v" / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="format_version 99"):
        ExportedClassifier.load(tmp_path / "v")


def test_wrong_prompt_shape_is_a_clear_error(tiny_backbone):
    with pytest.raises(ValueError, match="shape"):
        classifier_from_prompts(tiny_backbone, TINY_CLASSES, _cfg(), torch.zeros(3, 7))
    with pytest.raises(ValueError, match="no private prompt"):
        shared, private = _prompts()
        cfg = _cfg(**{"method.name": "promptfl"})
        classifier_from_prompts(tiny_backbone, TINY_CLASSES, cfg, shared, private)


def test_backbone_identity_mismatch(tiny_backbone, tmp_path):
    shared, private = _prompts()
    clf = export_classifier(tiny_backbone, TINY_CLASSES, _cfg(), shared, private, tmp_path)
    assert check_backbone(clf, tiny_backbone, allow_mismatch=False) == []
    clf.backbone["identity"] = "0123456789abcdef"
    with pytest.raises(BackboneMismatchError, match="--allow-backbone-mismatch"):
        check_backbone(clf, tiny_backbone, allow_mismatch=False)
    warnings = check_backbone(clf, tiny_backbone, allow_mismatch=True)
    assert len(warnings) == 1 and "0123456789abcdef" in warnings[0]


def test_image_processor_rebuilt_from_export(tiny_backbone):
    config = preprocessing_dict(tiny_backbone.image_processor)
    rebuilt = image_processor_from_dict(config, fallback=None)
    assert preprocessing_dict(rebuilt) == config
    assert image_processor_from_dict({"image_processor_type": "Nope"}, "fb") == "fb"


def test_find_images_recurses_and_reports_missing(tmp_path):
    write_synthetic_images(tmp_path / "a", ["x", "y"], per_class=2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / ".hidden" / "h.png")
    found = find_images([tmp_path / "a", tmp_path / "a" / "x" / "x_00.png"])
    assert [p.split("/")[-1] for p in found] == ["x_00.png", "x_01.png", "y_00.png", "y_01.png"]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        find_images([tmp_path / "missing.png"])


def test_predict_images_export_equals_run_and_skips_unreadable(tiny_backbone, tmp_path):
    root = write_synthetic_images(tmp_path / "imgs", TINY_CLASSES, per_class=3)
    (root / "river" / "broken.png").write_bytes(b"not a png")
    paths = find_images([root])
    cfg = _cfg()
    shared, private = _prompts()
    run = classifier_from_prompts(tiny_backbone, TINY_CLASSES, cfg, shared, private)
    export_classifier(tiny_backbone, TINY_CLASSES, cfg, shared, private, tmp_path / "e")
    exp = ExportedClassifier.load(tmp_path / "e")
    processor = image_processor_from_dict(exp.preprocessing, tiny_backbone.image_processor)
    a = predict_images(run, tiny_backbone, paths, top_k=3, batch_size=4, progress=False)
    b = predict_images(exp, tiny_backbone, paths, top_k=3, batch_size=4, image_processor=processor)
    assert len(a.predictions) == len(b.predictions) == 15
    assert [s[0] for s in a.skipped] == [str(root / "river" / "broken.png")]
    assert b.skipped[0][0] == a.skipped[0][0]
    for pa, pb in zip(a.predictions, b.predictions, strict=True):
        assert pa.image == pb.image and pa.classes == pb.classes and len(pa.classes) == 3
        assert pa.probs == pytest.approx(pb.probs, abs=1e-5)
        assert pa.probs == sorted(pa.probs, reverse=True)
    big = predict_images(run, tiny_backbone, paths[:2], top_k=99, progress=False)
    assert len(big.predictions[0].classes) == len(TINY_CLASSES)
    assert sum(big.predictions[0].probs) == pytest.approx(1.0, abs=1e-5)
