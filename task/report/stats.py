"""Numbers of one run (accuracies, bytes, seconds) and their mean +- std over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from task.config import parse_cross
from task.report.runs import Run, with_defaults


def num(x: Any) -> float | None:
    """A finite number as float, anything else (None, NaN, text) as None."""
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


def _train_seconds(rows: list[dict[str, Any]]) -> float | None:
    """Mean per-client training CPU seconds per round, rounds >= 2 (round 1 extracts
    features)."""
    train = []
    for m in [m for m in rows if int(m.get("round", 0)) >= 2] or rows:
        per = [
            num(c.get("train_cpu_s", c.get("train_seconds")))
            for c in (m.get("per_client") or {}).values()
            if isinstance(c, Mapping)
        ]
        per = [x for x in per if x is not None]
        if per:
            train.append(statistics.fmean(per))
    return statistics.fmean(train) if train else None


def _curve(rows: list[dict[str, Any]]) -> list[tuple[int, float | None, float | None, float]]:
    """(round, personalised, global, cumulative bytes both ways) per metrics row."""
    curve, total = [], 0.0
    for m in rows:
        total += float(m.get("bytes_to_clients", 0) or 0) + float(
            m.get("bytes_from_clients", 0) or 0
        )
        curve.append(
            (
                int(m.get("round", 0)),
                num(m.get("personalised_accuracy")),
                num(m.get("global_accuracy")),
                total,
            )
        )
    return curve


def run_stats(run: Run) -> RunStats:
    """The numbers of one run, from its summary where it has one, else its metrics."""
    rows = run.metrics
    s = run.summary or {}
    evaluated = [m for m in rows if num(m.get("personalised_accuracy")) is not None]
    last = evaluated[-1] if evaluated else {}
    payloads = [num(m.get("shared_payload_bytes")) for m in rows]
    payloads = [p for p in payloads if p is not None]
    n = max(len(rows), 1)
    secs = [num(m.get("round_seconds")) or 0.0 for m in rows]
    steady = [x for m, x in zip(rows, secs, strict=True) if int(m.get("round", 0)) >= 2]
    return RunStats(
        personalised=num(s.get("final_personalised_accuracy", last.get("personalised_accuracy"))),
        global_=num(s.get("final_global_accuracy", last.get("global_accuracy"))),
        best_personalised=num(s.get("best_personalised_accuracy")),
        rounds=len(rows),
        payload_bytes=max(payloads) if payloads else None,
        up_per_round=sum(float(m.get("bytes_from_clients", 0) or 0) for m in rows) / n,
        down_per_round=sum(float(m.get("bytes_to_clients", 0) or 0) for m in rows) / n,
        wall_seconds=float(s.get("wall_seconds", sum(secs)) or 0.0),
        steady_round_seconds=min(steady) if steady else None,
        train_seconds=_train_seconds(rows),
        clients=int(run.settings["data.num-clients"] or 0),
        curve=_curve(rows),
    )


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (None for one value) and count of the values that are not None."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def fmt_acc(values: Iterable[float | None]) -> str:
    """Percent, mean +- sample std over seeds ('±n/a' with one seed)."""
    mean, std, _ = mean_std(values)
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f} (n=1)"


def fmt_int(x: float | None) -> str:
    return "—" if x is None else f"{round(x):,}"


def fmt_sec(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def num_test(run: Run) -> int:
    """Test images pooled over the clients of a run's final round (0 when not recorded)."""
    per = (run.summary or {}).get("final_per_client") or {}
    return int(sum(num(c.get("num_test")) or 0 for c in per.values() if isinstance(c, Mapping)))


def cross_members(cfg: Mapping[str, Any]) -> list[tuple[str, range]]:
    """[(dataset, partition ids)] of a cross-dataset federation ([] for a plain one)."""
    text = str(with_defaults(cfg)["data.cross"] or "")
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
        rows = [r for r in rows if isinstance(r, Mapping) and num(r.get("num_test"))]
        accs = []
        for key in ("personalised_accuracy", "global_accuracy"):
            pairs = [(num(r.get(key)), float(r["num_test"])) for r in rows]
            pairs = [(a, n) for a, n in pairs if a is not None]
            total = sum(n for _, n in pairs)
            accs.append(sum(a * n for a, n in pairs) / total if total else None)
        out[name] = (accs[0], accs[1])
    return out
