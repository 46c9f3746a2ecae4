"""The server's arithmetic, free of Flower: which replies may be averaged, and FedAvg itself."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from task.methods import PRIVATE_KEY


def check_shared(
    arrays: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    dtype: torch.dtype,
) -> str | None:
    """Why a client's shared tensors must not be averaged in, or None if they are fine."""
    private = [k for k in arrays if k == PRIVATE_KEY or "private" in k]
    if private:
        return f"carries private tensor(s) {sorted(private)}: rejected, never aggregated"
    if set(arrays) != set(expected):
        return f"keys {sorted(arrays)} != expected {sorted(expected)}"
    for key, shape in expected.items():
        t = arrays[key]
        if tuple(t.shape) != tuple(shape):
            return f"{key}: shape {tuple(t.shape)} != {tuple(shape)}"
        if t.dtype != dtype:
            return f"{key}: dtype {t.dtype} != {dtype}"
        if not bool(torch.isfinite(t).all()):
            return f"{key}: non-finite values"
    return None


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


def weighted_mean(values: Sequence[tuple[float, int | float]]) -> float:
    """Mean of finite values weighted by counts; NaN when nothing is left."""
    kept = [(v, n) for v, n in values if v is not None and math.isfinite(v) and n > 0]
    total = sum(n for _, n in kept)
    return sum(v * n for v, n in kept) / total if total else float("nan")
