"""``fedrsclip-predict`` and ``fedrsclip-export``: use a trained model on new images.

    fedrsclip-export  --run runs/NAME [--client N | --private-store DIR] --out exports/NAME
    fedrsclip-predict --export exports/NAME  IMAGES_OR_FOLDERS...
    fedrsclip-predict --run runs/NAME [--client N | --private-store DIR]  IMAGES_OR_FOLDERS...

Also ``python -m task.predict_cli {predict,export} ...``. See docs/predict.md.

A model is a run's final global shared prompt plus, for a personalised model, one client's
private prompt (none: the global model). What this module reads from a run directory is
:func:`load_run_model`'s contract (documented there and in docs/predict.md).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

log = logging.getLogger("fedrsclip.predict")

EXIT_OK, EXIT_NOTHING_PREDICTED, EXIT_USAGE = 0, 1, 2


class RunLoadError(ValueError):
    """A run directory or private store lacks what predict/export needs."""


# -- the run directory contract ------------------------------------------------------------


@dataclass
class RunModel:
    """Everything needed to rebuild one model of a finished run."""

    cfg: Any  # task.config.RunConfig (resolved, from config.json)
    class_names: list[str]
    shared_ctx: torch.Tensor | None  # final global shared prompt S
    private_ctx: torch.Tensor | None  # one client's P, or None for the global model
    info: dict[str, Any] = field(default_factory=dict)  # run, round, client, experiment


def load_run_model(
    run_dir: str | os.PathLike[str],
    client: int | None = None,
    private_store: str | os.PathLike[str] | None = None,
    round_: int | None = None,
) -> RunModel:
    """Read a finished run (see the contract below) and, optionally, one client's private prompt.

    Contract (written by the ServerApp via task.run_dir.RunDir and by each ClientApp via
    task.private_store.PrivateStore):

    * ``<run>/config.json``: the resolved flat run config (``model.*``, ``prompt.*``,
      ``method.*``, ``loss.*``, ``data.*``, ..., plus ``server.*``, ``run.*``, ``client.*``).
    * ``<run>/state.json``: ``{"experiment_id": ...}``, which keys the clients' private stores.
    * ``<run>/checkpoints/global-rNNNNN.safetensors``: the global shared prompt after round N,
      tensor ``shared_ctx``. The final model is the last *completed* round (metrics line and
      checkpoint, ``RunDir.last_completed_round``), or ``round_`` when given.
    * class names: ``<run>/partition.json`` (``class_names``) when present; otherwise they are
      rebuilt from the config's ``data.*`` keys (needs the data locally).
    * private prompt (``client`` or ``private_store``): ``<base>/<experiment_id>/client-<N>/
      private-rNNNNN.safetensors`` (tensor ``private``, sha256 in metadata); the newest version at
      a round <= the final round is used, as the clients' own evaluation does. ``base`` is the
      run's ``client.private-dir`` unless ``private_store`` is given. ``private_store`` may also
      name a ``client-<N>`` directory itself or one ``private-r*.safetensors`` file.
    """
    from task.federated import parse_app_config
    from task.methods import get_method
    from task.prompt_learner import SHARED_KEY
    from task.run_dir import RunDir

    root = Path(run_dir)
    config_path, state_path = root / "config.json", root / "state.json"
    for p in (config_path, state_path):
        if not p.is_file():
            raise RunLoadError(
                f"{str(root)!r} is not a finished run directory: {p.name} is missing (a run "
                "directory is runs/<name>/ as written by `flwr run`)"
            )
    app = parse_app_config(json.loads(config_path.read_text()))
    cfg = app.core
    experiment = json.loads(state_path.read_text())["experiment_id"]
    run = RunDir(root, experiment)
    final = run.last_completed_round() if round_ is None else round_
    if final is None or not run.checkpoint_path(final).is_file():
        raise RunLoadError(
            f"run {str(root)!r} has no global checkpoint"
            + ("" if round_ is None else f" for round {round_}")
            + f" ({run.checkpoint_path(final or 0).relative_to(root)} missing)"
        )
    method = get_method(cfg.method.name)
    shared = None
    if method.shared_keys:
        state = run.load_checkpoint(final)
        if SHARED_KEY not in state:
            raise RunLoadError(f"{run.checkpoint_path(final)} has no tensor {SHARED_KEY!r}")
        shared = state[SHARED_KEY].float()
    info: dict[str, Any] = {"run": str(root), "experiment": experiment, "round": final}
    private = None
    if client is not None or private_store is not None:
        if not method.private_keys:
            raise RunLoadError(
                f"method {method.name!r} has no private prompt; leave out --client and "
                "--private-store (its global model is its only model)"
            )
        private, private_info = _load_private(
            client, private_store, app.client.private_dir, experiment, final
        )
        info.update(private_info)
    return RunModel(cfg, _class_names(root, cfg), shared, private, info)


def _class_names(root: Path, cfg: Any) -> list[str]:
    manifest = root / "partition.json"
    if manifest.is_file():
        return list(json.loads(manifest.read_text())["class_names"])
    from task.data.federation import build_federation

    log.info("no partition.json in the run; rebuilding class names from data.* settings")
    try:
        return cfg.data.class_name_list() or list(build_federation(cfg.data).class_names)
    except Exception as err:  # any data problem: say what the run lacks
        raise RunLoadError(
            f"the run has no partition.json and its data could not be loaded to recover the "
            f"class names ({err}); copy the run's partition.json into {root}"
        ) from err


_CLIENT_DIR = re.compile(r"^client-(\d+)$")
_PRIVATE_FILE = re.compile(r"^private-r(\d{5,})\.safetensors$")


def _load_private(
    client: int | None,
    store: str | os.PathLike[str] | None,
    private_dir: str,
    experiment: str,
    final_round: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    from task.private_store import PrivateStore

    path = Path(store) if store is not None else None
    if path is not None and path.is_file():
        return _load_private_file(path)
    if path is not None and not path.is_dir():
        raise RunLoadError(f"private store {str(path)!r} does not exist")
    m = _CLIENT_DIR.match(path.name) if path is not None else None
    if m:  # a client-<N> directory itself
        if client is not None and client != int(m.group(1)):
            raise RunLoadError(f"--client {client} but --private-store is {path.name}")
        client = int(m.group(1))
        base, exp = path.parent.parent, path.parent.name
        if exp != re.sub(r"[^A-Za-z0-9._-]+", "_", experiment):
            log.warning(
                "private store %s belongs to experiment %r, not this run's %r",
                path,
                exp,
                experiment,
            )
    elif client is None:
        raise RunLoadError(
            f"--private-store {str(path)!r} is neither a private-r*.safetensors file nor a "
            "client-<N> directory; pass the store's base directory with --client N"
        )
    elif path is not None and (path / f"client-{client}").is_dir():  # the experiment directory
        base, exp = path.parent, path.name
    else:  # the base directory (client.private-dir)
        base, exp = (path if path is not None else Path(private_dir)), experiment
    ps = PrivateStore(base, exp, client)
    loaded = ps.load(final_round)
    if loaded is None:
        raise RunLoadError(
            f"no private prompt for client {client} at round <= {final_round} in {ps.dir} "
            "(the client's private store lives on the client's machine: pass it with "
            "--private-store)"
        )
    tensor, r = loaded
    return tensor.float(), {"client": client, "private_round": r, "private_store": str(ps.dir)}


def _load_private_file(path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    from safetensors import safe_open

    from task.hashing import tensor_sha256

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "private" not in f.keys():  # noqa: SIM118 (safe_open API)
            raise RunLoadError(f"{path} holds no tensor 'private'")
        tensor = f.get_tensor("private")
    if "sha256" in meta and meta["sha256"] != tensor_sha256(tensor):
        raise RunLoadError(f"private prompt {path} fails its checksum")
    m = _CLIENT_DIR.match(path.parent.name)
    info: dict[str, Any] = {"private_store": str(path)}
    if m:
        info["client"] = int(m.group(1))
    if _PRIVATE_FILE.match(path.name):
        info["private_round"] = int(_PRIVATE_FILE.match(path.name).group(1))
    return tensor.float(), info


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
    from task.backbone import load_backbone, resolve_device
    from task.config import ModelConfig

    dtype = dtype or "float32"
    if dtype == "float16" and resolve_device(device).type != "cuda":
        log.warning("float16 needs CUDA; using float32 on %s", device)
        dtype = "float32"
    return load_backbone(ModelConfig(name=name, device=device, dtype=dtype))


def run_export(args: argparse.Namespace) -> int:
    from task.classifier import export_classifier

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
    from task.classifier import (
        ExportedClassifier,
        check_backbone,
        classifier_from_prompts,
        image_processor_from_dict,
        preprocessing_dict,
    )

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
        backbone, model.class_names, model.cfg, model.shared_ctx, model.private_ctx
    )
    source = {**model.info, "personalised": scorer.personalised, "method": model.cfg.method.name}
    return scorer, backbone, backbone.image_processor, source


def run_predict(args: argparse.Namespace) -> int:
    from task.classifier import find_images, predict_images

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


def format_report(report, fmt: str, source: dict[str, Any] | None = None) -> str:
    if fmt == "json":
        doc = {
            "model": source or {},
            "predictions": [
                {
                    "image": p.image,
                    "top_k": [
                        {"class": c, "index": i, "probability": pr}
                        for c, i, pr in zip(p.classes, p.indices, p.probs, strict=True)
                    ],
                }
                for p in report.predictions
            ],
            "skipped": [{"image": img, "error": err} for img, err in report.skipped],
            "num_predicted": len(report.predictions),
            "num_skipped": len(report.skipped),
        }
        return json.dumps(doc, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "rank", "class", "index", "probability"])
        for p in report.predictions:
            for rank, (c, i, pr) in enumerate(zip(p.classes, p.indices, p.probs, strict=True)):
                w.writerow([p.image, rank + 1, c, i, f"{pr:.6g}"])
        return buf.getvalue()
    return _table(report)


def _table(report) -> str:
    if not report.predictions:
        return ""
    k = max(len(p.classes) for p in report.predictions)
    header = ["image"]
    for r in range(1, k + 1):
        header += [f"top-{r}", "p"]
    rows = [header]
    for p in report.predictions:
        row = [p.image]
        for c, pr in zip(p.classes, p.probs, strict=True):
            row += [c, f"{pr:.4f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if header[i] == "p" else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


# -- entry points --------------------------------------------------------------------------


def _run(command: str, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would mix with our output
    from task.backbone import BackboneNotFoundError
    from task.classifier import BackboneMismatchError, ExportError

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
