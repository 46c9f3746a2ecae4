"""Turn ``runs/`` into ``docs/results.md`` and PNG plots (pure: reads run directories only).

Usage::

    python -m task.report --runs runs --out docs/results.md [--preamble docs/results/preamble.md]

Every run directory written by ``task.run_dir.RunDir`` (``config.json``, ``metrics.jsonl``,
``summary.json``) is read. Runs are grouped into

* a **setup**: backbone + every hyper-parameter that is not the method, the seed, the dataset or
  the federation size (so runs with different training recipes never share a table);
* a **federation** column: dataset (or cross-dataset mix) x clients x split;
* a **method** row; seeds are aggregated as mean +- sample std.

Only complete runs (``summary.json`` present and ``final_round`` = ``server.num-rounds``) enter
the tables; the others are listed as incomplete. Plots go to ``<out dir>/results/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from task.config import parse_cross
from task.hashing import file_sha256
from task.methods import METHODS, get_method, prompt_numel

# Keys that do not define a setup (they vary within a table, or only say where things live).
NON_SETUP_KEYS = frozenset(
    {
        "method.name",
        "train.seed",
        "server.num-rounds",
        "server.timeout",
        "server.min-replies",
        "server.min-nodes",  # how many nodes must be up (1 for the centralised row)
        "data.dataset",
        "data.root",
        "data.hub-id",
        "data.cache-dir",
        "data.num-clients",
        "data.cross",
        "data.cross-roots",
        "data.cross-aliases",
        "data.partitioner",
        "data.seed",  # the partition seed: part of the federation label, not the setup
        "data.alpha",
        "data.classes-per-client",
        "data.min-client-size",
        "data.skip-corrupt",
        "data.verify",
        "model.device",
        "client.progress",
        "client.on-corrupt",
    }
)
NON_SETUP_PREFIXES = ("run.", "cache.", "client.")
DATASET_TITLES = {
    "ucmerced": "Fed-UCMerced",
    "aid": "Fed-AID",
    "nwpu-resisc45": "Fed-NWPU",
    "optimal-31": "Fed-Optimal",
    "eurosat": "Fed-EuroSAT",
}
# Context width W of known hub backbones (the shared prompt is h x W numbers).
KNOWN_WIDTHS = {"openai/clip-vit-base-patch16": 512, "openai/clip-vit-base-patch32": 512}
# Order of rows: baselines, then FedRSCLIP and its ablations.
METHOD_ORDER = list(METHODS)
BASELINES = ("local", "promptfl", "fedprox", "fedotp", "fedpgp", "fedavg-full")


# -- reading runs -------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    root: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def method(self) -> str:
        return str(self.config.get("method.name", "?"))

    @property
    def seed(self) -> Any:
        return self.config.get("train.seed")

    @property
    def num_rounds(self) -> int:
        return int(self.config.get("server.num-rounds", 0) or 0)

    @property
    def complete(self) -> bool:
        return (
            self.summary is not None
            and int(self.summary.get("final_round") or 0) >= self.num_rounds > 0
        )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of metrics.jsonl (a torn last line is ignored), as RunDir reads."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def load_runs(runs_dir: str | Path) -> list[Run]:
    """Every ``<runs_dir>/<name>/`` with a config.json, sorted by name."""
    out = []
    for root in sorted(Path(runs_dir).glob("*/config.json")):
        root = root.parent
        try:
            config = json.loads((root / "config.json").read_text())
        except json.JSONDecodeError:
            continue
        summary = None
        if (root / "summary.json").is_file():
            try:
                summary = json.loads((root / "summary.json").read_text())
            except json.JSONDecodeError:
                summary = None
        out.append(Run(root.name, root, config, read_metrics(root / "metrics.jsonl"), summary))
    return out


# -- labels -------------------------------------------------------------------------------
def split_label(cfg: Mapping[str, Any]) -> str:
    """e.g. ``Dir(0.1)``; a non-default partition seed (``data.seed``) is its own split, since
    it draws other clients and other test images (``Dir(0.1) part. 1``)."""
    part = cfg.get("data.partitioner", "even")
    if part == "dirichlet":
        label = f"Dir({cfg.get('data.alpha')})"
    elif part == "pathological":
        label = f"{cfg.get('data.classes-per-client')} classes/client"
    else:
        label = str(part)
    data_seed = int(cfg.get("data.seed", 0) or 0)
    return f"{label} part. {data_seed}" if data_seed else label


def federation_label(cfg: Mapping[str, Any]) -> str:
    """e.g. ``Fed-UCMerced 10c even`` or ``cross ucmerced:5+aid:5 Dir(0.1)``."""
    cross = str(cfg.get("data.cross") or "")
    if cross:
        base = "cross " + cross.replace(",", "+")
    else:
        ds = str(cfg.get("data.dataset", "?"))
        base = f"{DATASET_TITLES.get(ds, ds)} {cfg.get('data.num-clients')}c"
    return f"{base} {split_label(cfg)}"


def _norm(value: Any) -> Any:
    """Absolute paths compared in normal form (/a/main/../shared == /a/shared)."""
    if isinstance(value, str) and value.startswith("/"):
        return os.path.normpath(value)
    return value


def setup_key(cfg: Mapping[str, Any]) -> str:
    kept = {
        k: _norm(v)
        for k, v in sorted(cfg.items())
        if k not in NON_SETUP_KEYS and not k.startswith(NON_SETUP_PREFIXES)
    }
    return json.dumps(kept, sort_keys=True, default=str)


def app_defaults(repo: Path | None = None) -> dict[str, Any]:
    """[tool.flwr.app.config] of this repository's pyproject.toml (for 'differs from default')."""
    path = (repo or Path(__file__).resolve().parents[1]) / "pyproject.toml"
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    return dict(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def backbone_identity(run: Run, _cache: dict[str, str] = {}) -> str:  # noqa: B006
    """A recorded identity (summary/config), else sha256 of local weights, else 'not recorded'."""
    for src in (run.summary or {}, run.config):
        for key in ("backbone_identity", "model.identity", "backbone"):
            if src.get(key):
                return f"{src[key]} (recorded)"
    name = str(run.config.get("model.name", ""))
    if name not in _cache:
        weights = Path(name) / "model.safetensors"
        if weights.is_file():
            _cache[name] = f"model.safetensors sha256 {file_sha256(weights)[:16]} (read now)"
        else:
            _cache[name] = "not recorded"
    return _cache[name]


def data_identity(cfg: Mapping[str, Any]) -> str:
    """data.root (or hub id) and, when ``<root>.sha256`` exists, a hash of that manifest."""
    parts = []
    roots = str(cfg.get("data.cross-roots") or "") or str(cfg.get("data.root") or "")
    for root in [r.split("=", 1)[-1] for r in roots.split(",") if r] or [
        str(cfg.get("data.hub-id") or cfg.get("data.dataset"))
    ]:
        root = _norm(root)
        manifest = Path(root.rstrip("/") + ".sha256")
        extra = f" (manifest sha256 {file_sha256(manifest)[:16]})" if manifest.is_file() else ""
        parts.append(f"`{root}`{extra}")
    return ", ".join(parts)


def context_width(model_name: str) -> int | None:
    if model_name in KNOWN_WIDTHS:
        return KNOWN_WIDTHS[model_name]
    path = Path(model_name) / "config.json"
    if path.is_file():
        try:
            return int(json.loads(path.read_text())["text_config"]["hidden_size"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError):
            return None
    return None


def registry_params(run: Run) -> int | None:
    """Shared numbers per round from the method registry (None when it needs the model)."""
    try:
        method = get_method(run.method)
    except ValueError:
        return None
    if method.full_finetune:
        return None
    width = context_width(str(run.config.get("model.name", "")))
    if width is None:
        return None
    return prompt_numel(method, int(run.config.get("prompt.n-ctx", 4)), width)


# -- per-run numbers ----------------------------------------------------------------------
def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


@dataclass
class RunStats:
    personalised: float | None
    global_: float | None
    best_personalised: float | None
    rounds: int
    payload_bytes: float | None  # measured shared tensors per upload (one client)
    up_per_round: float  # measured message bytes, all clients -> server, mean per round
    down_per_round: float
    wall_seconds: float
    steady_round_seconds: float | None  # fastest round >= 2 (caches warm, least contention)
    train_seconds: float | None  # mean per-client training CPU seconds per round (r >= 2)
    clients: int
    curve: list[tuple[int, float | None, float | None, float]] = field(default_factory=list)


def run_stats(run: Run) -> RunStats:
    rows = run.metrics
    s = run.summary or {}
    evaluated = [m for m in rows if _num(m.get("personalised_accuracy")) is not None]
    last = evaluated[-1] if evaluated else {}
    pers = _num(s.get("final_personalised_accuracy", last.get("personalised_accuracy")))
    glob = _num(s.get("final_global_accuracy", last.get("global_accuracy")))
    payloads = [_num(m.get("shared_payload_bytes")) for m in rows]
    payloads = [p for p in payloads if p is not None]
    n = max(len(rows), 1)
    secs = [_num(m.get("round_seconds")) or 0.0 for m in rows]
    steady = [x for m, x in zip(rows, secs, strict=True) if int(m.get("round", 0)) >= 2]
    train = []
    later = [m for m in rows if int(m.get("round", 0)) >= 2] or rows  # round 1 extracts features
    for m in later:
        per = [
            _num(c.get("train_cpu_s", c.get("train_seconds")))
            for c in (m.get("per_client") or {}).values()
            if isinstance(c, Mapping)
        ]
        per = [x for x in per if x is not None]
        if per:
            train.append(statistics.fmean(per))
    curve, total = [], 0.0
    for m in rows:
        total += float(m.get("bytes_to_clients", 0) or 0) + float(
            m.get("bytes_from_clients", 0) or 0
        )
        curve.append(
            (
                int(m.get("round", 0)),
                _num(m.get("personalised_accuracy")),
                _num(m.get("global_accuracy")),
                total,
            )
        )
    return RunStats(
        personalised=pers,
        global_=glob,
        best_personalised=_num(s.get("best_personalised_accuracy")),
        rounds=len(rows),
        payload_bytes=max(payloads) if payloads else None,
        up_per_round=sum(float(m.get("bytes_from_clients", 0) or 0) for m in rows) / n,
        down_per_round=sum(float(m.get("bytes_to_clients", 0) or 0) for m in rows) / n,
        wall_seconds=float(s.get("wall_seconds", sum(secs)) or 0.0),
        steady_round_seconds=min(steady) if steady else None,
        train_seconds=statistics.fmean(train) if train else None,
        clients=int(run.config.get("data.num-clients", 0) or 0),
        curve=curve,
    )


# -- aggregation --------------------------------------------------------------------------
def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def fmt_acc(values: Iterable[float | None]) -> str:
    """Percent, mean +- sample std over seeds ('±n/a' with one seed)."""
    mean, std, n = mean_std(values)
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f} (n=1)"


def fmt_int(x: float | None) -> str:
    return "—" if x is None else f"{round(x):,}"


def fmt_sec(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


@dataclass
class Group:
    setup: str
    federation: str
    method: str
    runs: list[Run]
    stats: list[RunStats]
    superseded: list[Run] = field(default_factory=list)


def missing_keys(run: Run, defaults: Mapping[str, Any]) -> list[str]:
    """Config keys the app has now but this run's config.json lacks (added after it ran)."""
    return sorted(k for k in defaults if k not in run.config)


def group_runs(
    runs: Sequence[Run],
    defaults: Mapping[str, Any] | None = None,
    variant_keys: Sequence[str] = (),
) -> dict[str, dict[str, dict[str, Group]]]:
    """setup -> federation -> method -> Group (complete runs only).

    A key missing from an older run's config is taken at its current default, so adding a
    config key to the app does not split otherwise identical runs into separate setups.
    A *variant key* (e.g. ``loss.alpha``) off its default does not start a new setup: the run
    becomes a method row of its own, ``fedrsclip (loss.alpha=0.1)``, beside the default ones.
    """
    defaults = defaults or {}
    out: dict[str, dict[str, dict[str, Group]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        if not run.complete:
            continue
        filled = {**{k: defaults[k] for k in missing_keys(run, defaults)}, **run.config}
        off = [
            f"{k}={filled[k]}"
            for k in variant_keys
            if k in filled and k in defaults and _norm(filled[k]) != _norm(defaults[k])
        ]
        m = f"{run.method} ({', '.join(off)})" if off else run.method
        setup_cfg = {**filled, **{k: defaults[k] for k in variant_keys if k in defaults}}
        s, f = setup_key(setup_cfg), federation_label(run.config)
        g = out[s][f].setdefault(m, Group(s, f, m, [], []))
        same_seed = [r for r in g.runs if r.seed == run.seed]
        if same_seed:  # a rerun of the same experiment: the newest counts, the other is listed
            old = same_seed[0]
            if _finished_at(old) >= _finished_at(run):
                g.superseded.append(run)
                continue
            i = g.runs.index(old)
            del g.runs[i], g.stats[i]
            g.superseded.append(old)
        g.runs.append(run)
        g.stats.append(run_stats(run))
    return out


def _finished_at(run: Run) -> float:
    path = run.root / "summary.json"
    return path.stat().st_mtime if path.is_file() else 0.0


def base_method(label: str) -> str:
    """``fedrsclip (loss.alpha=0.1)`` -> ``fedrsclip`` (the method of a variant row)."""
    return label.split(" (")[0]


def _method_rank(name: str) -> tuple[int, str]:
    base = base_method(name)  # a variant row sorts after its method
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), name)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# -- plots --------------------------------------------------------------------------------
def _mean_curve(stats: Sequence[RunStats], index: int) -> list[tuple[float, float]]:
    by_round: dict[int, list[float]] = defaultdict(list)
    x_by_round: dict[int, list[float]] = defaultdict(list)
    for st in stats:
        for point in st.curve:
            if point[index] is not None:
                by_round[point[0]].append(point[index])
                x_by_round[point[0]].append(point[3])
    return [
        (statistics.fmean(x_by_round[r]), statistics.fmean(by_round[r])) for r in sorted(by_round)
    ]


def plot_federation(
    groups: Mapping[str, Group], title: str, out_dir: Path, stem: str
) -> list[Path]:
    """accuracy per round per method, and accuracy vs cumulative bytes sent (seed means)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    methods = sorted(groups, key=_method_rank)

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_p, ax_g = fig.subplots(1, 2, sharey=True)
    for i, m in enumerate(methods):
        color = f"C{i % 10}"
        for ax, idx in ((ax_p, 1), (ax_g, 2)):
            per_round: dict[int, list[float]] = defaultdict(list)
            for st in groups[m].stats:
                for point in st.curve:
                    if point[idx] is not None:
                        per_round[point[0]].append(point[idx])
            if not per_round:
                continue
            xs = sorted(per_round)
            ys = [100 * statistics.fmean(per_round[r]) for r in xs]
            if len(xs) == 1:  # e.g. zeroshot: one evaluation, the same every round
                ax.axhline(ys[0], color=color, ls=":", label=m)
            else:
                ax.plot(xs, ys, marker="o", color=color, label=m)
    ax_p.set_title("personalised (shared + private)", fontsize=9)
    ax_g.set_title("global (shared prompt only)", fontsize=9)
    for ax in (ax_p, ax_g):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    ax_p.set_ylabel("test accuracy (%)")
    ax_p.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{title}: accuracy per round (mean over seeds)", fontsize=9)
    fig.tight_layout()
    path = out_dir / f"{stem}-accuracy.png"
    fig.savefig(path, dpi=110)
    paths.append(path)

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, m in enumerate(methods):
        pts = _mean_curve(groups[m].stats, 1)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, [100 * y for y in ys], marker="o", color=f"C{i % 10}", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes sent, both directions, all clients (measured)")
    ax.set_ylabel("personalised test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{title}: accuracy vs bytes sent", fontsize=9)
    fig.tight_layout()
    path = out_dir / f"{stem}-bytes.png"
    fig.savefig(path, dpi=110)
    paths.append(path)
    return paths


def scaling_series(
    feds: Mapping[str, Mapping[str, Group]],
) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """{dataset + split: {method: [(clients, gain, std), ...]}}: final personalised accuracy
    minus zero-shot's in the same federation (points), for non-cross federations where
    `zeroshot` ran, and only datasets/splits that ran at two or more federation sizes.

    Why relative: each client splits its own images into train and test, so a different number
    of clients means different test images (zero-shot itself moves by several points); the gain
    over zero-shot on the same images is what can be compared across sizes."""
    out: dict[str, dict[str, list[tuple[int, float, float]]]] = defaultdict(dict)
    for groups in feds.values():
        if "zeroshot" not in groups:
            continue
        ref, _, _ = mean_std(st.personalised for st in groups["zeroshot"].stats)
        cfg = groups["zeroshot"].runs[0].config
        if ref is None or cfg.get("data.cross"):
            continue
        ds = str(cfg.get("data.dataset", "?"))
        key = f"{DATASET_TITLES.get(ds, ds)} {split_label(cfg)}"
        for m, g in groups.items():
            mean, std, _ = mean_std(st.personalised for st in g.stats)
            if m != "zeroshot" and mean is not None:
                n = g.stats[0].clients
                out[key].setdefault(m, []).append((n, 100 * (mean - ref), 100 * (std or 0.0)))
    return {
        k: {m: sorted(pts) for m, pts in v.items()}
        for k, v in sorted(out.items())
        if len({n for pts in v.values() for n, _, _ in pts}) >= 2
    }


def plot_scaling(
    feds: Mapping[str, Mapping[str, Group]], out_dir: Path, stem: str
) -> Path | None:
    """Gain over zero-shot vs number of clients, one panel per dataset and split."""
    series = scaling_series(feds)
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5 * len(series), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    methods = sorted({m for v in series.values() for m in v}, key=_method_rank)
    for ax, (key, by_method) in zip(axes, series.items(), strict=True):
        for i, m in enumerate(methods):
            if m not in by_method:
                continue
            xs, ys, es = zip(*by_method[m], strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=f"C{i % 10}", label=m)
        ax.axhline(0.0, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ticks = sorted({n for pts in by_method.values() for n, _, _ in pts})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())  # no "3x10^1" between the sizes
        ax.set_xlabel("clients (1 = centralised)")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("personalised accuracy − zero-shot (points)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(
        "gain over zero-shot on the same test images vs federation size (mean ± std over seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    path = out_dir / f"{stem}-scaling.png"
    fig.savefig(path, dpi=110)
    return path


# -- markdown -----------------------------------------------------------------------------
def image_link(path: Path, out: Path) -> str:
    """Markdown image, relative to the report when the PNG lies beside it."""
    rel = path.relative_to(out.parent) if path.is_relative_to(out.parent) else path
    return f"![{path.stem}]({rel.as_posix()})"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def setup_description(example: Run, defaults: Mapping[str, Any]) -> list[str]:
    cfg = example.config
    diff = sorted(
        f"`{k}={cfg[k]}`"
        for k in cfg
        if k not in NON_SETUP_KEYS
        and not k.startswith(NON_SETUP_PREFIXES)
        and k != "model.name"
        and k in defaults
        and defaults[k] != cfg[k]
    )
    name = str(_norm(cfg.get("model.name")))
    lines = [f"- backbone: `{name}` — identity: {backbone_identity(example)}"]
    if "clip-vit-base-patch16" not in name:
        lines.append("  - **not CLIP ViT-B/16**: these numbers are not comparable to the paper's.")
    lines.append(f"- hyper-parameters that differ from pyproject.toml: {', '.join(diff) or 'none'}")
    return lines


def fedrsclip_margins(groups: Mapping[str, Group]) -> list[tuple[str, str, str]]:
    """[(fedrsclip row, best baseline, signed margin in points)] of final personalised
    accuracy, for ``fedrsclip`` and each of its variant rows."""
    best = None
    for m in BASELINES:
        if m in groups:
            acc, _, _ = mean_std(st.personalised for st in groups[m].stats)
            if acc is not None and (best is None or acc > best[1]):
                best = (m, acc)
    if best is None:
        return []
    out = []
    for m in sorted(groups, key=_method_rank):
        if base_method(m) == "fedrsclip":
            ours, _, _ = mean_std(st.personalised for st in groups[m].stats)
            if ours is not None:
                diff = 100 * (ours - best[1])
                out.append((m, best[0], f"{diff:+.2f}" if abs(diff) >= 0.005 else "0.00 (tie)"))
    return out


def render(
    runs: Sequence[Run],
    out: Path,
    preamble: str = "",
    plot_dir: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
    variant_keys: Sequence[str] = (),
) -> str:
    """The markdown report; writes the PNGs under ``plot_dir`` (default ``<out dir>/results``)."""
    defaults = app_defaults() if defaults is None else defaults
    plot_dir = plot_dir or out.parent / "results"
    grouped = group_runs(runs, defaults, variant_keys)
    lines = [
        "# Results",
        "",
        "<!-- generated by `python -m task.report`; edit the preamble, not this file -->",
        "",
    ]
    if preamble.strip():
        lines += [preamble.strip(), ""]
    done = sum(r.complete for r in runs)
    lines += [
        f"{done} complete run(s) of {len(runs)} found. Accuracies are final-round test accuracy "
        "in %, mean ± sample std over seeds (n=1: a single seed, no spread). *Personalised*: "
        "each client's own model (shared + private prompt where the method has one) on its own "
        "test split, pooled over clients; *global*: the shared prompt alone.",
        "",
    ]
    ordered = sorted(
        grouped.items(),
        key=lambda kv: (-sum(len(g.runs) for f in kv[1].values() for g in f.values()), kv[0]),
    )
    for s_index, (_setup, feds) in enumerate(ordered, 1):
        example = next(iter(next(iter(feds.values())).values())).runs[0]
        lines += [f"## Setup {s_index}", ""]
        lines += setup_description(example, defaults)
        for f in feds.values():
            for g in f.values():
                for r in g.runs:
                    if miss := missing_keys(r, defaults):
                        lines.append(
                            f"- `{r.name}` ran before "
                            + ", ".join(f"`{k}`" for k in miss)
                            + " existed: grouped here as if at today's default "
                            + ", ".join(f"`{defaults[k]}`" for k in miss)
                            + " (the code that ran may differ)"
                        )
        lines.append("")
        fed_names = sorted(feds)
        methods = sorted({m for f in feds.values() for m in f}, key=_method_rank)
        for title, attr in (("personalised", "personalised"), ("global", "global_")):
            lines += [f"### Final {title} accuracy (%)", ""]
            rows = []
            for m in methods:
                cells = [
                    fmt_acc(getattr(st, attr) for st in feds[f][m].stats) if m in feds[f] else ""
                    for f in fed_names
                ]
                rows.append([f"`{m}`", *cells])
            lines += _table(["method", *fed_names], rows)
            lines.append("")
        margins = [(f, *row) for f in fed_names for row in fedrsclip_margins(feds[f])]
        if margins:
            lines += [
                "### FedRSCLIP vs the best baseline (personalised, points)",
                "",
                "Baselines: " + ", ".join(f"`{b}`" for b in BASELINES) + " (those that ran). "
                "Negative = FedRSCLIP loses.",
                "",
            ]
            lines += _table(
                ["federation", "FedRSCLIP row", "best baseline", "FedRSCLIP − best"],
                [[f, f"`{m}`", f"`{b}`", d] for f, m, b, d in margins],
            )
            lines.append("")
        scaling = plot_scaling(feds, plot_dir, slug(f"setup{s_index}"))
        if scaling:
            lines += [image_link(scaling, out), ""]
        for f in fed_names:
            example_f = next(iter(feds[f].values())).runs[0]
            lines += [f"### {f}", "", f"- data: {data_identity(example_f.config)}"]
            ns = {st.clients for g in feds[f].values() for st in g.stats}
            lines.append(f"- clients: {', '.join(map(str, sorted(ns)))}")
            tests = sorted({t for g in feds[f].values() for r in g.runs if (t := num_test(r))})
            if tests:
                lines.append(
                    f"- test images (pooled over clients): {', '.join(map(str, tests))}"
                    f" — one image = {100 / tests[0]:.2f} points"
                )
            lines.append("")
            rows = []
            for m in sorted(feds[f], key=_method_rank):
                g = feds[f][m]
                params = {registry_params(r) for r in g.runs}
                payload = {st.payload_bytes for st in g.stats}
                rows.append(
                    [
                        f"`{m}`",
                        ", ".join(str(r.seed) for r in g.runs),
                        ", ".join(sorted({str(st.rounds) for st in g.stats})),
                        fmt_acc(st.personalised for st in g.stats),
                        fmt_acc(st.global_ for st in g.stats),
                        fmt_acc(st.best_personalised for st in g.stats),
                        " / ".join(fmt_int(p) for p in params),
                        " / ".join(fmt_int(p) for p in payload),
                        fmt_int(statistics.fmean(st.up_per_round for st in g.stats)),
                        fmt_int(statistics.fmean(st.down_per_round for st in g.stats)),
                        fmt_sec(statistics.fmean(st.wall_seconds for st in g.stats)),
                        fmt_sec(mean_std(st.steady_round_seconds for st in g.stats)[0]),
                    ]
                )
            lines += _table(
                [
                    "method",
                    "seeds",
                    "rounds",
                    "final pers.",
                    "final global",
                    "best pers.",
                    "params/round (registry)",
                    "payload B/upload (measured)",
                    "B up/round, all clients",
                    "B down/round, all clients",
                    "wall s",
                    "s/round (min r≥2)",
                ],
                rows,
            )
            lines += [
                "",
                "*params/round*: shared numbers one client uploads per round "
                "(`task.methods.prompt_numel`, h × W; — where it needs the model, e.g. "
                "`fedavg-full`). *payload*: measured bytes of the shared tensors in one upload "
                "(`shared_payload_bytes`). *B up/down*: measured size of every message per round "
                "(training and evaluation, with metadata), summed over clients. "
                "*s/round (min r≥2)*: "
                "the fastest round after the first (round 1, and for patch-level methods also "
                "round 2, extract and cache image features; the minimum also dampens CPU "
                "contention from other jobs).",
                "",
            ]
            for m in sorted(feds[f], key=_method_rank):
                for r in feds[f][m].runs:
                    bad = {
                        k: (r.summary or {}).get(k) for k in ("clients_failed", "replies_rejected")
                    }
                    if any(bad.values()):
                        reasons = sorted(
                            {
                                str(x.get("reason"))
                                for row in r.metrics
                                for x in row.get("rejected") or []
                                if isinstance(x, Mapping)
                            }
                        )
                        lines.append(
                            f"- **`{r.name}`**: {bad['clients_failed']} failed client "
                            f"replies, {bad['replies_rejected']} rejected"
                            + (f" (server: {'; '.join(reasons[:3])})" if reasons else "")
                            + "; its accuracies are missing or partial."
                        )
            lines.append("")
            header, rows = cross_member_rows(feds[f])
            if rows:
                lines += [
                    f"#### By member dataset ({f})",
                    "",
                    "Final accuracy (%) of each member dataset's clients, pooled over their "
                    "test images; clients are numbered in `data.cross` order.",
                    "",
                ]
                lines += _table(header, rows)
                lines.append("")
            stem = slug(f"setup{s_index}-{f}")
            for path in plot_federation(feds[f], f, plot_dir, stem):
                lines.append(image_link(path, out))
            lines.append("")
            ot = ot_cost_rows(feds[f])
            if ot:
                lines += [
                    f"#### Local compute cost of the OT constraint ({f})",
                    "",
                    "Round wall time covers local training and evaluation of every client "
                    "(simulation, 2 Ray actors on this machine); *client train s/round* is the "
                    "mean CPU time of one client's training handler in rounds ≥ 2 "
                    "(`train_cpu_s`, robust to other jobs on the machine).",
                    "",
                ]
                lines += _table(
                    ["", "s/round (min r≥2)", "client train s/round", "rounds"],
                    ot,
                )
                lines.append("")
    superseded = [
        (r, g)
        for feds in grouped.values()
        for f in feds.values()
        for g in f.values()
        for r in g.superseded
    ]
    if superseded:
        lines += [
            "## Superseded runs (not in the tables)",
            "",
            "Same setup, federation, method and seed as a newer complete run (a rerun, e.g. "
            "after a code change); only the newest counts.",
            "",
        ]
        lines += _table(
            ["run", "method", "final pers.", "final global", "replaced by"],
            [
                [
                    f"`{r.name}`",
                    f"`{r.method}`",
                    fmt_acc([run_stats(r).personalised]),
                    fmt_acc([run_stats(r).global_]),
                    ", ".join(f"`{x.name}`" for x in g.runs if x.seed == r.seed),
                ]
                for r, g in superseded
            ],
        )
        lines.append("")
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        lines += ["## Incomplete runs (not in the tables)", ""]
        lines += _table(
            ["run", "method", "rounds done / asked"],
            [
                [
                    f"`{r.name}`",
                    f"`{r.method}`",
                    f"{max((int(m.get('round', 0)) for m in r.metrics), default=0)} / "
                    f"{r.num_rounds}",
                ]
                for r in incomplete
            ],
        )
        lines.append("")
    return "\n".join(lines)


def num_test(run: Run) -> int:
    """Test images pooled over the clients of a run's final round (0 when not recorded)."""
    per = (run.summary or {}).get("final_per_client") or {}
    return int(sum(_num(c.get("num_test")) or 0 for c in per.values() if isinstance(c, Mapping)))


def cross_members(cfg: Mapping[str, Any]) -> list[tuple[str, range]]:
    """[(dataset, partition ids)] of a cross-dataset federation ([] for a plain one)."""
    text = str(cfg.get("data.cross") or "")
    out, start = [], 0
    for name, n in parse_cross(text) if text else []:
        out.append((name, range(start, start + n)))
        start += n
    return out


def member_accuracy(run: Run) -> dict[str, tuple[float | None, float | None]]:
    """Final personalised and global accuracy of each member dataset's clients, pooled over
    their test images (num_test-weighted, as the federation-wide numbers are)."""
    per = (run.summary or {}).get("final_per_client") or {}
    out = {}
    for name, ids in cross_members(run.config):
        rows = [per.get(str(i)) for i in ids]
        rows = [r for r in rows if isinstance(r, Mapping) and _num(r.get("num_test"))]
        accs = []
        for key in ("personalised_accuracy", "global_accuracy"):
            pairs = [(_num(r.get(key)), float(r["num_test"])) for r in rows]
            pairs = [(a, n) for a, n in pairs if a is not None]
            total = sum(n for _, n in pairs)
            accs.append(sum(a * n for a, n in pairs) / total if total else None)
        out[name] = (accs[0], accs[1])
    return out


def cross_member_rows(groups: Mapping[str, Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per method, each member dataset's personalised / global accuracy."""
    example = next(iter(groups.values())).runs[0]
    names = [n for n, _ in cross_members(example.config)]
    if not names:
        return [], []
    header = ["method"] + [f"{n} {k}" for n in names for k in ("pers.", "global")]
    rows = []
    for m in sorted(groups, key=_method_rank):
        accs = [member_accuracy(r) for r in groups[m].runs]
        cells = [
            fmt_acc(a.get(n, (None, None))[i] for a in accs) for n in names for i in (0, 1)
        ]
        rows.append([f"`{m}`", *cells])
    return header, rows


def ot_cost_rows(groups: Mapping[str, Group]) -> list[list[str]]:
    """fedrsclip vs fedrsclip-noot time per round, and the ratio (when both ran)."""
    if "fedrsclip" not in groups or "fedrsclip-noot" not in groups:
        return []
    rows, values = [], {}
    for m in ("fedrsclip", "fedrsclip-noot"):
        st = groups[m].stats
        step = mean_std(s.steady_round_seconds for s in st)[0]
        if step is None:  # a one-round run: use its only round
            step = statistics.fmean(s.wall_seconds / max(s.rounds, 1) for s in st)
        train = mean_std(s.train_seconds for s in st)[0]
        values[m] = (step, train)
        rows.append([f"`{m}`", fmt_sec(step), fmt_sec(train), str(st[0].rounds)])
    (a, ta), (b, tb) = values["fedrsclip"], values["fedrsclip-noot"]
    ratio = f"{a / b:.2f}×" if b else "—"
    tratio = f"{ta / tb:.2f}×" if ta and tb else "—"
    rows.append(["with / without OT", ratio, tratio, ""])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        "--variant-keys",
        default="",
        help="comma-separated config keys that, off their default, make a method row of their "
        "own in the same setup instead of a new setup (e.g. loss.alpha)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    plot_dir = Path(args.plots) if args.plots else out.parent / "results"
    pre_path = Path(args.preamble) if args.preamble else plot_dir / "preamble.md"
    preamble = pre_path.read_text() if pre_path.is_file() else ""
    runs = load_runs(args.runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = [k.strip() for k in args.variant_keys.split(",") if k.strip()]
    unknown = sorted(set(variants) - set(app_defaults()))
    if unknown:
        parser.error(
            f"--variant-keys: {', '.join(unknown)} not a run-config key of pyproject.toml "
            "(e.g. loss.alpha)"
        )
    text = render(runs, out, preamble, plot_dir, variant_keys=variants)
    out.write_text(text + "\n")
    print(f"wrote {out} ({sum(r.complete for r in runs)} complete runs of {len(runs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
