"""``python -m task.report``: read a directory of runs, write the markdown report and plots."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from task.data.registry import REGISTRY
from task.locks import LockedError
from task.report.archive import ArchiveError, merged, update_archive
from task.report.render import render
from task.report.runs import app_defaults, load_runs

DESCRIPTION = (
    "Turn ``runs/`` into ``docs/results.md`` and PNG plots (reads run directories and, with "
    "--archive, the run records kept with the report)."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m task.report", description=DESCRIPTION)
    parser.add_argument("--runs", default="runs", help="directory of run directories")
    parser.add_argument("--out", default="docs/results.md", help="markdown file to write")
    parser.add_argument(
        "--preamble",
        default=None,
        help="markdown inserted at the top (default: <plots>/preamble.md when it exists)",
    )
    parser.add_argument(
        "--plots", default=None, help="directory for the PNGs (default: <out dir>/results)"
    )
    parser.add_argument(
        "--archive",
        default=None,
        help="a .jsonl file of run records kept with the report: the complete runs of --runs "
        "are added to it, and the report covers both (runs whose directories are gone stay in)",
    )
    parser.add_argument(
        "--variant-keys",
        default="",
        help="comma-separated config keys that, off their default, make a method row of their "
        "own in the same setup instead of a new setup (e.g. loss.alpha)",
    )
    parser.add_argument(
        "--at-round",
        type=int,
        default=None,
        help="every run as it stood after this round: runs extended past it count with their "
        "first N rounds, complete runs that ended before it are left out (e.g. 10 for the "
        "10-round tables once some runs went on to 20)",
    )
    parser.add_argument(
        "--seen-datasets",
        default="",
        help="comma-separated datasets the backbone was built with (e.g. aid,nwpu-resisc45): "
        "the clients of these datasets in a cross-dataset federation are left out of the "
        "accuracy tables and paired differences, with a note (each federation's own section "
        "still lists them)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report; exit code 2 (argparse) for a --variant-keys entry that is no key."""
    parser = _parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    plot_dir = Path(args.plots) if args.plots else out.parent / "results"
    pre_path = Path(args.preamble) if args.preamble else plot_dir / "preamble.md"
    preamble = pre_path.read_text() if pre_path.is_file() else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = [k.strip() for k in args.variant_keys.split(",") if k.strip()]
    unknown = sorted(set(variants) - set(app_defaults()))
    if unknown:
        parser.error(
            f"--variant-keys: {', '.join(unknown)} not a run-config key of pyproject.toml "
            "(e.g. loss.alpha)"
        )
    seen = [d.strip() for d in args.seen_datasets.split(",") if d.strip()]
    unknown = sorted(set(seen) - set(REGISTRY))
    if unknown:
        parser.error(
            f"--seen-datasets: {', '.join(unknown)} not a dataset "
            f"(use {', '.join(sorted(REGISTRY))})"
        )
    if args.at_round is not None and args.at_round < 1:
        parser.error(f"--at-round must be >= 1, got {args.at_round}")
    runs = load_runs(args.runs)
    if args.archive:
        try:
            archived, changed = update_archive(args.archive, runs)
        except (ArchiveError, LockedError) as e:
            parser.exit(1, f"python -m task.report: {e}\n")
        runs = merged(archived, runs)
        print(f"{args.archive}: {len(archived)} runs ({changed} added or replaced)")
    text = render(
        runs,
        out,
        preamble,
        plot_dir,
        variant_keys=variants,
        at_round=args.at_round,
        seen_datasets=seen,
    )
    out.write_text(text + "\n")
    print(f"wrote {out} ({sum(r.complete for r in runs)} complete runs of {len(runs)})")
    return 0
