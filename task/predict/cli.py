"""``fedrsclip-predict`` and ``fedrsclip-export``: use a trained model on new images.

    fedrsclip-export  --run runs/NAME [--client N | --private-store DIR] --out exports/NAME
    fedrsclip-predict --export exports/NAME  IMAGES_OR_FOLDERS...
    fedrsclip-predict --run runs/NAME [--client N | --private-store DIR]  IMAGES_OR_FOLDERS...

Also ``python -m task.predict.cli {predict,export} ...``. See docs/predict.md.

A model is a run's final global shared prompt plus, for a personalised model, one client's
private prompt (none: the global model). What is read from a run directory is
:func:`task.runs.run_model.load_run_model`'s contract (documented there and in docs/predict.md); the
output formats are in task.predict.output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from task.predict.output import format_report  # noqa: E402
from task.runs.run_model import RunLoadError, RunModel, load_run_model  # noqa: E402

__all__ = ["RunLoadError", "RunModel", "export_main", "load_run_model", "main", "predict_main"]

log = logging.getLogger("fedrsclip.predict")

EXIT_OK, EXIT_NOTHING_PREDICTED, EXIT_USAGE = 0, 1, 2


# -- argument parsing ----------------------------------------------------------------------


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="where to load the CLIP backbone from (local directory or hub id); default: the "
        "model recorded in the export or the run's model.name",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="backbone dtype; default: the export's / run's (float16 falls back to float32 on CPU)",
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--client",
        type=int,
        help="client (partition id) whose private prompt personalises the model; with neither "
        "--client nor --private-store: the global (shared-only) model",
    )
    p.add_argument(
        "--private-store",
        help="a client's private store: its client-<N> directory, one private-r*.safetensors "
        "file, or (with --client) the base directory (default: the run's client.private-dir)",
    )
    p.add_argument(
        "--round",
        type=int,
        dest="round_",
        help="use the global checkpoint of this round (default: the last completed round)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedrsclip",
        description="Use a trained FedRSCLIP model: export a classifier or predict images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "predict",
        parents=[predict_parser(add_help=False)],
        help="top-k classes of image files or folders",
        description=predict_parser().description,
    )
    sub.add_parser(
        "export",
        parents=[export_parser(add_help=False)],
        help="write a self-contained classifier (safetensors + JSON)",
        description=export_parser().description,
    )
    return parser


def predict_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedrsclip-predict",
        add_help=add_help,
        description="Top-k scene classes of images with an exported classifier or a finished "
        "run's global / personalised model.",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--export", help="an export directory written by fedrsclip-export")
    src.add_argument("--run", help="a finished run directory (runs/<name>)")
    _add_run_args(p)
    _add_backbone_args(p)
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("-o", "--output", help="write the results to this file instead of stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-backbone-mismatch",
        action="store_true",
        help="predict even if the loaded backbone is not the one the export was made with",
    )
    return p


def export_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedrsclip-export",
        add_help=add_help,
        description="Compute a model's class text features once and write a self-contained "
        "classifier directory (classifier.safetensors + classifier.json).",
    )
    p.add_argument("--run", required=True, help="a finished run directory (runs/<name>)")
    p.add_argument("--out", required=True, help="directory to write (must be new or empty)")
    p.add_argument("--force", action="store_true", help="overwrite an existing export")
    _add_run_args(p)
    _add_backbone_args(p)
    return p


# -- commands ------------------------------------------------------------------------------


def _load_backbone(name: str, device: str, dtype: str | None):
    from task.config import ModelConfig
    from task.model.backbone import load_backbone, resolve_device

    dtype = dtype or "float32"
    if dtype == "float16" and resolve_device(device).type != "cuda":
        log.warning("float16 needs CUDA; using float32 on %s", device)
        dtype = "float32"
    return load_backbone(ModelConfig(name=name, device=device, dtype=dtype))


def run_export(args: argparse.Namespace) -> int:
    from task.predict.classifier import export_classifier

    model = load_run_model(args.run, args.client, args.private_store, args.round_)
    name = args.model or model.cfg.model.name
    backbone = _load_backbone(name, args.device, args.dtype or model.cfg.model.dtype)
    exported = export_classifier(
        backbone,
        model.class_names,
        model.cfg,
        model.shared_ctx,
        model.private_ctx,
        args.out,
        model_name=name,
        info=model.info,
        overwrite=args.force,
        mix=model.mix,
    )
    kind = "personalised" if model.private_ctx is not None else "global"
    client = f" for client {model.info['client']}" if "client" in model.info else ""
    print(
        f"exported the {kind} model{client} of {args.run} (round {model.info['round']}): "
        f"{len(exported.class_names)} classes, head {exported.head}, backbone "
        f"{exported.backbone['identity']} -> {args.out}",
        file=sys.stderr,
    )
    return EXIT_OK


def make_scorer(args: argparse.Namespace):
    """(scorer, backbone, image processor, description) for the predict arguments."""
    from task.predict.classifier import (
        check_backbone,
        classifier_from_prompts,
        image_processor_from_dict,
        preprocessing_dict,
    )
    from task.predict.exported import ExportedClassifier

    if args.export:
        clf = ExportedClassifier.load(args.export)
        name = args.model or clf.backbone["name"]
        backbone = _load_backbone(name, args.device, args.dtype or clf.backbone.get("dtype"))
        for warning in check_backbone(clf, backbone, args.allow_backbone_mismatch):
            print(f"WARNING: {warning}", file=sys.stderr)
        processor = image_processor_from_dict(clf.preprocessing, backbone.image_processor)
        if preprocessing_dict(processor) != preprocessing_dict(backbone.image_processor):
            print(
                "WARNING: the export's image preprocessing differs from the loaded model's; "
                "using the export's (the one its features were trained with)",
                file=sys.stderr,
            )
        source = {"export": args.export, **clf.model}
        return clf.to(backbone.device), backbone, processor, source
    model = load_run_model(args.run, args.client, args.private_store, args.round_)
    name = args.model or model.cfg.model.name
    backbone = _load_backbone(name, args.device, args.dtype or model.cfg.model.dtype)
    scorer = classifier_from_prompts(
        backbone, model.class_names, model.cfg, model.shared_ctx, model.private_ctx, model.mix
    )
    source = {**model.info, "personalised": scorer.personalised, "method": model.cfg.method.name}
    return scorer, backbone, backbone.image_processor, source


def run_predict(args: argparse.Namespace) -> int:
    from task.predict.images import find_images, predict_images

    if args.top_k < 1 or args.batch_size < 1:
        raise ValueError("--top-k and --batch-size must be >= 1")
    paths = find_images(args.inputs)
    if not paths:
        raise ValueError(f"no image files found in {', '.join(args.inputs)}")
    scorer, backbone, processor, source = make_scorer(args)
    report = predict_images(
        scorer,
        backbone,
        paths,
        top_k=args.top_k,
        batch_size=args.batch_size,
        image_processor=processor,
        progress=False if args.no_progress else None,
    )
    text = format_report(report, args.format, source)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    n_ok, n_bad = len(report.predictions), len(report.skipped)
    summary = f"{n_ok} image(s) predicted, {n_bad} unreadable skipped"
    if n_bad:
        summary += ": " + ", ".join(p for p, _ in report.skipped[:10])
        summary += " ..." if n_bad > 10 else ""
    print(summary, file=sys.stderr)
    if not n_ok:  # a script must not mistake "nothing could be read" for success
        print(
            f"error: none of the {len(paths)} input image(s) could be read; nothing was "
            f"predicted (exit code {EXIT_NOTHING_PREDICTED})",
            file=sys.stderr,
        )
        return EXIT_NOTHING_PREDICTED
    return EXIT_OK


# -- output formats ------------------------------------------------------------------------


# -- entry points --------------------------------------------------------------------------


def _run(command: str, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would mix with our output
    from task.model.backbone import BackboneNotFoundError
    from task.predict.classifier import BackboneMismatchError
    from task.predict.exported import ExportError

    try:
        return run_predict(args) if command == "predict" else run_export(args)
    except (
        RunLoadError,
        ExportError,
        BackboneMismatchError,
        BackboneNotFoundError,
        FileNotFoundError,
        ValueError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


def predict_main(argv: Sequence[str] | None = None) -> int:
    return _run("predict", predict_parser().parse_args(argv))


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run("export", export_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run(args.command, args)


if __name__ == "__main__":
    sys.exit(main())
