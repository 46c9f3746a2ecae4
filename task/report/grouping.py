"""Complete runs grouped into setup -> federation -> method row, seeds side by side."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from task.methods import METHODS
from task.report.labels import federation_label, norm, setup_key
from task.report.runs import Run, finished_at, missing_keys
from task.report.stats import RunStats, run_stats

# Order of rows: baselines, then FedRSCLIP and its ablations.
METHOD_ORDER = list(METHODS)
BASELINES = (
    "local", "promptfl", "fedprox", "fedotp", "fedpgp", "promptfolio", "pfedmoap", "fedavg-full"
)  # fmt: skip

Grouped = dict[str, dict[str, dict[str, "Group"]]]


@dataclass
class Group:
    """The seeds of one method row in one federation of one setup."""

    setup: str
    federation: str
    method: str
    runs: list[Run]
    stats: list[RunStats]
    superseded: list[Run] = field(default_factory=list)
    member: str = ""  # a cross-dataset federation's member dataset this row covers (members.py)


def base_method(label: str) -> str:
    """``fedrsclip (loss.alpha=0.1)`` -> ``fedrsclip`` (the method of a variant row)."""
    return label.split(" (")[0]


def method_rank(name: str) -> tuple[int, str]:
    """Sort key of method rows: registry order, a variant row after its method."""
    base = base_method(name)
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), name)


def _row_label(
    run: Run, filled: Mapping[str, Any], defaults: Mapping[str, Any], variant_keys: Sequence[str]
) -> str:
    """The method, with the variant keys this run has off their default in brackets (those
    the method reads: a baseline is not split by the personalised head of fedrsclip)."""
    unread = METHODS[run.method].unread_keys() if run.method in METHODS else frozenset()
    off = [
        f"{k}={filled[k]}"
        for k in variant_keys
        if k in filled
        and k in defaults
        and k not in unread
        and norm(filled[k]) != norm(defaults[k])
    ]
    return f"{run.method} ({', '.join(off)})" if off else run.method


def _add(g: Group, run: Run) -> None:
    """Add a run to its row; a rerun of the same seed: the newest counts, the other is listed."""
    same_seed = [r for r in g.runs if r.seed == run.seed]
    if same_seed:
        old = same_seed[0]
        if finished_at(old) >= finished_at(run):
            g.superseded.append(run)
            return
        i = g.runs.index(old)
        del g.runs[i], g.stats[i]
        g.superseded.append(old)
    g.runs.append(run)
    g.stats.append(run_stats(run))


def group_runs(
    runs: Sequence[Run],
    defaults: Mapping[str, Any] | None = None,
    variant_keys: Sequence[str] = (),
) -> Grouped:
    """setup -> federation -> method -> Group (complete runs only).

    A key missing from an older run's config is taken at its current default, so adding a
    config key to the app does not split otherwise identical runs into separate setups.
    A *variant key* (e.g. ``loss.alpha``) off its default does not start a new setup: the run
    becomes a method row of its own, ``fedrsclip (loss.alpha=0.1)``, beside the default ones.
    """
    defaults = defaults or {}
    out: Grouped = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        if not run.complete:
            continue
        filled = {**{k: defaults[k] for k in missing_keys(run, defaults)}, **run.config}
        m = _row_label(run, filled, defaults, variant_keys)
        setup_cfg = {**filled, **{k: defaults[k] for k in variant_keys if k in defaults}}
        s, f = setup_key(setup_cfg), federation_label(run.config)
        _add(out[s][f].setdefault(m, Group(s, f, m, [], [])), run)
    return out
