"""PNG plots of a federation (accuracy per round, accuracy vs bytes) and of a setup (gain
over zero-shot vs federation size). matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from task.report.grouping import Group, method_rank
from task.report.labels import dataset_title, split_label
from task.report.runs import with_defaults
from task.report.stats import RunStats, mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Series = dict[str, dict[str, list[tuple[int, float, float]]]]


def slug(text: str) -> str:
    """File-name stem of a label: ``Fed-UCMerced 10c even`` -> ``fed-ucmerced-10c-even``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _mean_curve(stats: Sequence[RunStats], index: int) -> list[tuple[float, float]]:
    """(mean cumulative bytes, mean value) per round of curve column ``index``."""
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


def _figure(size: tuple[float, float]) -> Figure:
    """A figure with an Agg canvas (no GUI backend, matplotlib imported only now)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _style(i: int) -> dict[str, str]:
    """The i-th line's colour, dash and marker: ten colours, then the same colours dashed,
    so rows beyond the tenth (the ablations) never look like an earlier method."""
    return {
        "color": f"C{i % 10}",
        "ls": ("-", "--", "-.")[(i // 10) % 3],
        "marker": ("o", "s", "^")[(i // 10) % 3],
    }


def _plot_accuracy(groups: Mapping[str, Group], title: str, path: Path) -> None:
    """Personalised and global accuracy per round, one line per method (seed means)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure((10, 4))
    ax_p, ax_g = fig.subplots(1, 2, sharey=True)
    for i, m in enumerate(sorted(groups, key=method_rank)):
        style = _style(i)
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
                ax.axhline(ys[0], color=style["color"], ls=":", label=m)
            else:
                ax.plot(xs, ys, **style, label=m)
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
    fig.savefig(path, dpi=110)


def _plot_bytes(groups: Mapping[str, Group], title: str, path: Path) -> None:
    """Personalised accuracy vs cumulative bytes sent, one line per method (seed means)."""
    fig = _figure((6, 4))
    ax = fig.subplots()
    for i, m in enumerate(sorted(groups, key=method_rank)):
        pts = _mean_curve(groups[m].stats, 1)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, [100 * y for y in ys], **_style(i), label=m)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes sent, both directions, all clients (measured)")
    ax.set_ylabel("personalised test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{title}: accuracy vs bytes sent", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_federation(
    groups: Mapping[str, Group], title: str, out_dir: Path, stem: str
) -> list[Path]:
    """accuracy per round per method, and accuracy vs cumulative bytes sent (seed means)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    accuracy, sent = out_dir / f"{stem}-accuracy.png", out_dir / f"{stem}-bytes.png"
    _plot_accuracy(groups, title, accuracy)
    _plot_bytes(groups, title, sent)
    return [accuracy, sent]


def scaling_series(feds: Mapping[str, Mapping[str, Group]]) -> Series:
    """{dataset + split: {method: [(clients, gain, std), ...]}}: final personalised accuracy
    minus zero-shot's in the same federation (points), for non-cross federations where
    `zeroshot` ran, and only datasets/splits and methods that ran at two or more federation
    sizes.

    Why relative: each client splits its own images into train and test, so a different number
    of clients means different test images (zero-shot itself moves by several points); the gain
    over zero-shot on the same images is what can be compared across sizes."""
    out: Series = defaultdict(dict)
    for groups in feds.values():
        if "zeroshot" not in groups:
            continue
        ref, _, _ = mean_std(st.personalised for st in groups["zeroshot"].stats)
        cfg = with_defaults(groups["zeroshot"].runs[0].config)
        if ref is None or cfg["data.cross"]:
            continue
        key = f"{dataset_title(cfg['data.dataset'])} {split_label(cfg)}"
        for m, g in groups.items():
            mean, std, _ = mean_std(st.personalised for st in g.stats)
            if m != "zeroshot" and mean is not None:
                n = g.stats[0].clients
                out[key].setdefault(m, []).append((n, 100 * (mean - ref), 100 * (std or 0.0)))
    # A method at one size only (an ablation run at 10 clients) draws no line: left out, and a
    # panel left with no line is dropped. One point per size: data.seed names its own split.
    lines = {k: {m: sorted(pts) for m, pts in v.items() if len(pts) >= 2} for k, v in out.items()}
    return {k: v for k, v in sorted(lines.items()) if v}


def plot_scaling(feds: Mapping[str, Mapping[str, Group]], out_dir: Path, stem: str) -> Path | None:
    """Gain over zero-shot vs number of clients, one panel per dataset and split."""
    series = scaling_series(feds)
    if not series:
        return None
    from matplotlib.ticker import NullFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    fig = _figure((5 * len(series), 4))
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    methods = sorted({m for v in series.values() for m in v}, key=method_rank)
    for ax, (key, by_method) in zip(axes, series.items(), strict=True):
        for i, m in enumerate(methods):
            if m not in by_method:
                continue
            xs, ys, es = zip(*by_method[m], strict=True)
            ax.errorbar(xs, ys, yerr=es, capsize=3, **_style(i), label=m)
        ax.axhline(0.0, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ticks = sorted({n for pts in by_method.values() for n, _, _ in pts})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())  # no "3x10^1" between the sizes
        ax.set_xlabel("clients (1 = centralised)")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("personalised accuracy − zero-shot (points)")
    # Beside the panels: with a dozen rows, a legend inside hides the points it names.
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(
        "gain over zero-shot on the same test images vs federation size (mean ± std over seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    path = out_dir / f"{stem}-scaling.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
