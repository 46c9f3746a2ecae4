"""Paired differences: every method of a federation ran on the same partitions with the same
training seeds, so FedRSCLIP minus a baseline is compared pair by pair, over (training seed,
partition seed), with a 95% t-interval; an interval that covers 0 is "not distinguishable"."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence

from task.report.grouping import BASELINES, Group, base_method, method_rank
from task.report.labels import federation_label
from task.report.members import member_label
from task.report.runs import with_defaults
from task.report.stats import num
from task.report.tables import table

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.960


def paired_interval(diffs: Sequence[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% interval; None with one pair)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None
    return mean, t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def _pooled(feds: Mapping[str, Mapping[str, Group]]) -> dict[str, dict[str, dict[tuple, float]]]:
    """federation without its partition seed -> method row -> (train seed, data seed) -> acc."""
    out: dict[str, dict[str, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
    for groups in feds.values():
        for m, g in groups.items():
            for run, st in zip(g.runs, g.stats, strict=True):
                cfg = with_defaults(run.config)
                base = federation_label({**run.config, "data.seed": 0})
                if g.member:
                    base = member_label(base, g.member)
                acc = num(st.personalised)
                if acc is not None:
                    out[base][m][(cfg["train.seed"], cfg["data.seed"])] = acc
    return out


def _verdict(low: float, high: float, ahead: str, behind: str) -> str:
    return "not distinguishable" if low <= 0 <= high else (ahead if low > 0 else behind)


def _pair_row(
    fed: str, a: str, b: str, by_method: Mapping[str, Mapping[tuple, float]], words: tuple[str, str]
) -> list[str] | None:
    """One row of ``a`` minus ``b`` over the (training seed, partition) pairs both ran."""
    common = sorted(set(by_method.get(a, {})) & set(by_method.get(b, {})))
    if not common:
        return None
    diffs = [100 * (by_method[a][k] - by_method[b][k]) for k in common]
    mean, half = paired_interval(diffs)
    if half is None:
        ci, verdict = "—", "one pair: no interval"
    else:
        ci = f"[{mean - half:+.2f}, {mean + half:+.2f}]"
        verdict = _verdict(mean - half, mean + half, *words)
    seeds = sorted({k[0] for k in common})
    parts = sorted({k[1] for k in common})
    return [fed, f"`{a}`", f"`{b}`", str(len(common)),
            f"{len(seeds)} × {len(parts)}", f"{mean:+.2f}", ci, verdict]  # fmt: skip


def paired_rows(feds: Mapping[str, Mapping[str, Group]]) -> list[list[str]]:
    """Per federation and FedRSCLIP row, against each baseline that ran on the same pairs."""
    rows = []
    for fed, by_method in sorted(_pooled(feds).items()):
        ours_rows = [m for m in sorted(by_method, key=method_rank) if base_method(m) == "fedrsclip"]
        for ours in ours_rows:
            for b in BASELINES:
                row = _pair_row(fed, ours, b, by_method, ("FedRSCLIP ahead", "FedRSCLIP behind"))
                if row:
                    rows.append(row)
    return rows


def is_ablation(row: str) -> bool:
    """``fedrsclip-nodpa`` (and its variant rows): FedRSCLIP with one part taken out."""
    return base_method(row).startswith("fedrsclip-")


def ablation_rows(feds: Mapping[str, Mapping[str, Group]]) -> list[list[str]]:
    """Per federation, each ablation minus the full method (``fedrsclip``, default settings)
    on the pairs both ran: what taking the part out changed, with its interval."""
    rows = []
    for fed, by_method in sorted(_pooled(feds).items()):
        for abl in sorted(filter(is_ablation, by_method), key=method_rank):
            row = _pair_row(fed, abl, "fedrsclip", by_method, ("ablation above", "ablation below"))
            if row:
                rows.append(row)
    return rows


def _block(title: str, note: str, a: str, b: str, rows: list[list[str]]) -> list[str]:
    """A titled table of paired rows (nothing when there are none)."""
    if not rows:
        return []
    header = ["federation", a, b, "pairs", "seeds × partitions", "mean diff",
              "95% interval", "verdict"]  # fmt: skip
    return [f"### {title}", "", note, ""] + table(header, rows) + [""]


def paired_section(feds: Mapping[str, Mapping[str, Group]]) -> list[str]:
    return _block(
        "FedRSCLIP minus each baseline, paired (personalised, points)",
        "Each pair: one training seed on one partition (`data.seed`), both methods on the same "
        "clients and images. Mean of the paired differences and its 95% t-interval; "
        "*not distinguishable*: the interval covers 0.",
        "FedRSCLIP row",
        "baseline",
        paired_rows(feds),
    ) + _block(
        "Each ablation minus the full method, paired (personalised, points)",
        "The same pairs: an ablation and `fedrsclip` on the same training seed and partition. "
        "*ablation above*: the full method loses by keeping that part (its whole interval "
        "is above 0).",
        "ablation",
        "full method",
        ablation_rows(feds),
    )
