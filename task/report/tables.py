"""Markdown tables of the report: rows of cells built from grouped runs, no prose."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from task.report.grouping import BASELINES, Group, base_method, method_rank
from task.report.labels import (
    backbone_identity,
    is_setup_key,
    norm,
    registry_params,
)
from task.report.runs import Run
from task.report.stats import cross_members, fmt_acc, fmt_int, fmt_sec, mean_std, member_accuracy

FEDERATION_HEADER = [
    "method",
    "seeds",
    "rounds",
    "final pers.",
    "final global",
    "best pers.",
    "params/round (registry)",
    "payload B/message (measured)",
    "B up/round, all clients",
    "B down/round, all clients",
    "wall s",
    "s/round (min r≥2)",
]


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def setup_description(example: Run, defaults: Mapping[str, Any]) -> list[str]:
    """Bullets: the backbone and its identity, and the hyper-parameters off their default."""
    cfg = example.config
    diff = sorted(
        f"`{k}={cfg[k]}`"
        for k in cfg
        if is_setup_key(k) and k != "model.name" and k in defaults and defaults[k] != cfg[k]
    )
    name = str(norm(cfg.get("model.name")))
    lines = [f"- backbone: `{name}` — identity: {backbone_identity(example)}"]
    if "clip-vit-base-patch16" not in name:
        lines.append("  - **not CLIP ViT-B/16**: these numbers are not comparable to the paper's.")
    lines.append(f"- hyper-parameters that differ from pyproject.toml: {', '.join(diff) or 'none'}")
    return lines


def accuracy_rows(
    feds: Mapping[str, Mapping[str, Group]], fed_names: Sequence[str], attr: str
) -> list[list[str]]:
    """One row per method, one cell per federation: final accuracy ``attr`` over seeds."""
    methods = sorted({m for f in feds.values() for m in f}, key=method_rank)
    return [
        [
            f"`{m}`",
            *(
                fmt_acc(getattr(st, attr) for st in feds[f][m].stats) if m in feds[f] else ""
                for f in fed_names
            ),
        ]
        for m in methods
    ]


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
    for m in sorted(groups, key=method_rank):
        if base_method(m) == "fedrsclip":
            ours, _, _ = mean_std(st.personalised for st in groups[m].stats)
            if ours is not None:
                diff = 100 * (ours - best[1])
                out.append((m, best[0], f"{diff:+.2f}" if abs(diff) >= 0.005 else "0.00 (tie)"))
    return out


def federation_rows(groups: Mapping[str, Group]) -> list[list[str]]:
    """Per method row of one federation: seeds, accuracies, sizes and times."""
    rows = []
    for m in sorted(groups, key=method_rank):
        g = groups[m]
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
    return rows


def cross_member_rows(groups: Mapping[str, Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per method, each member dataset's personalised / global accuracy."""
    example = next(iter(groups.values())).runs[0]
    names = [n for n, _ in cross_members(example.config)]
    if not names:
        return [], []
    header = ["method"] + [f"{n} {k}" for n in names for k in ("pers.", "global")]
    rows = []
    for m in sorted(groups, key=method_rank):
        accs = [member_accuracy(r) for r in groups[m].runs]
        cells = [fmt_acc(a.get(n, (None, None))[i] for a in accs) for n in names for i in (0, 1)]
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
