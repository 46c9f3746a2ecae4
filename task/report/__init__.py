"""Turn ``runs/`` into ``docs/results.md`` and PNG plots (pure: reads run directories only).

Usage::

    python -m task.report --runs runs --out docs/results.md [--preamble docs/results/preamble.md]

Every run directory written by ``task.runs.run_dir.RunDir`` (``config.json``, ``metrics.jsonl``,
``summary.json``) is read. Runs are grouped into

* a **setup**: backbone + every hyper-parameter that is not the method, the seed, the dataset or
  the federation size (so runs with different training recipes never share a table);
* a **federation** column: dataset (or cross-dataset mix) x clients x split;
* a **method** row; seeds are aggregated as mean +- sample std.

Only complete runs (``summary.json`` present and ``final_round`` = ``server.num-rounds``) enter
the tables; the others are listed as incomplete. Plots go to ``<out dir>/results/``.

Modules: ``runs`` (reading run directories, today's config defaults), ``labels`` (setup key,
federation label, model and data identity), ``stats`` (numbers of a run, mean +- std),
``grouping`` (setup -> federation -> method rows), ``tables``, ``plots``, ``render`` (the
markdown) and ``cli`` (``python -m task.report``).
"""

from task.report.cli import main
from task.report.grouping import BASELINES, METHOD_ORDER, Group, base_method, group_runs
from task.report.labels import (
    DATASET_TITLES,
    NON_SETUP_KEYS,
    NON_SETUP_PREFIXES,
    backbone_identity,
    data_identity,
    federation_label,
    registry_params,
    setup_key,
    split_label,
)
from task.report.plots import plot_federation, plot_scaling, scaling_series
from task.report.render import render
from task.report.runs import Run, app_defaults, load_runs, missing_keys, read_metrics
from task.report.stats import RunStats, fmt_acc, mean_std, member_accuracy, run_stats

__all__ = [
    "BASELINES",
    "DATASET_TITLES",
    "METHOD_ORDER",
    "NON_SETUP_KEYS",
    "NON_SETUP_PREFIXES",
    "Group",
    "Run",
    "RunStats",
    "app_defaults",
    "backbone_identity",
    "base_method",
    "data_identity",
    "federation_label",
    "fmt_acc",
    "group_runs",
    "load_runs",
    "main",
    "mean_std",
    "member_accuracy",
    "missing_keys",
    "plot_federation",
    "plot_scaling",
    "read_metrics",
    "registry_params",
    "render",
    "run_stats",
    "scaling_series",
    "setup_key",
    "split_label",
]
