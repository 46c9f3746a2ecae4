"""The server's arithmetic, free of Flower: FedAvg itself and the robust rules
(``server.aggregation``) that replace it on the shared tensors. Which replies may be averaged is
reply_rules' to say."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from task.config.app import AGGREGATIONS


def weighted_average(
    states: Sequence[tuple[Mapping[str, torch.Tensor], int | float]],
) -> dict[str, torch.Tensor]:
    """FedAvg: sum_i n_i * x_i / sum_i n_i, accumulated in float64, returned as float32."""
    if not states:
        raise ValueError("nothing to average")
    total = float(sum(n for _, n in states))
    if not total > 0:
        raise ValueError("example counts sum to zero")
    out: dict[str, torch.Tensor] = {}
    for key in states[0][0]:
        acc = torch.zeros_like(states[0][0][key], dtype=torch.float64)
        for state, n in states:
            acc += state[key].to(torch.float64) * (float(n) / total)
        out[key] = acc.to(torch.float32)
    return out


def aggregate_shared(
    states: Sequence[tuple[Mapping[str, torch.Tensor], int | float]],
    rule: str,
    trim_fraction: float,
    byzantine: int,
) -> dict[str, torch.Tensor]:
    """The round's shared tensors from the accepted replies under ``server.aggregation``.

    ``fedavg`` weights by examples; the robust rules do not (a count is a claim an attacker
    makes too): ``median`` is the coordinate-wise median (the mean of the two middle values
    for an even count, as FedMedian), ``trimmed-mean`` drops the ``floor(trim_fraction * n)``
    lowest and highest values of every coordinate and averages the rest (FedTrimmedAvg), and
    ``krum`` keeps the one reply whose summed squared distance to its ``n - byzantine - 2``
    nearest others is smallest (Blanchard et al. 2017; at least one neighbour). The settings
    have no defaults here: they are declared once, in the run config (``server.*``).
    """
    if rule == "fedavg":
        return weighted_average(states)
    if rule not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {rule!r}; one of {list(AGGREGATIONS)}")
    if not states:
        raise ValueError("nothing to aggregate")
    if rule == "krum":
        return {
            k: v.to(torch.float32).clone()
            for k, v in states[_krum_pick(states, byzantine)][0].items()
        }
    out: dict[str, torch.Tensor] = {}
    n = len(states)
    for key in states[0][0]:
        stack = torch.stack([s[key].to(torch.float64) for s, _ in states]).sort(dim=0).values
        if rule == "median":
            mid = n // 2
            value = stack[mid] if n % 2 else (stack[mid - 1] + stack[mid]) / 2
        else:
            cut = math.floor(trim_fraction * n)
            value = stack[cut : n - cut].mean(dim=0)
        out[key] = value.to(torch.float32)
    return out


def _krum_pick(states: Sequence[tuple[Mapping[str, torch.Tensor], int | float]], f: int) -> int:
    """Index of the Krum choice: the reply closest (squared L2) to its nearest neighbours."""
    flat = torch.stack(
        [torch.cat([s[k].to(torch.float64).reshape(-1) for k in sorted(s)]) for s, _ in states]
    )
    dist = (flat[:, None, :] - flat[None, :, :]).pow(2).sum(dim=-1)  # exact, unlike cdist's mm
    n = len(states)
    neighbours = max(n - f - 2, 1)
    scores = []
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        scores.append(float(others.sort().values[:neighbours].sum()))  # alone: 0
    return min(range(n), key=lambda i: (scores[i], i))


def weighted_mean(values: Sequence[tuple[float, int | float]]) -> float:
    """Mean of finite values weighted by counts; NaN when nothing is left."""
    kept = [(v, n) for v, n in values if v is not None and math.isfinite(v) and n > 0]
    total = sum(n for _, n in kept)
    return sum(v * n for v, n in kept) / total if total else float("nan")
