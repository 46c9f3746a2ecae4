"""server.aggregation: the robust rules on the shared tensors, against Flower's own functions,
against hand-computed values, against a poisoned reply, and wired through the strategy."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import (
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from server_app.aggregate import aggregate_shared, weighted_mean
from server_app.strategy import SharedPromptFedAvg
from task.config import ConfigError, parse_app_config
from task.config.fields import section_roles
from tests.server_app.test_strategy import SHAPE, reply, train_round

# The settings tests do not vary (the run config's defaults, spelled out: no defaults here).
TRIM, BYZANTINE = 0.2, 1


def _agg(states, rule: str, trim_fraction: float = TRIM, byzantine: int = BYZANTINE):
    return aggregate_shared(states, rule, trim_fraction, byzantine)


def _states(n: int, seed: int = 0) -> list[tuple[dict[str, torch.Tensor], int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        ({"a": torch.randn(4, 8, generator=g), "b": torch.randn(3, generator=g)}, 10 + i)
        for i in range(n)
    ]


def _as_numpy(states):
    return [([s["a"].numpy(), s["b"].numpy()], n) for s, n in states]


def _close(ours: dict[str, torch.Tensor], theirs: list[np.ndarray]) -> None:
    for key, ref in zip(("a", "b"), theirs, strict=True):
        assert ours[key].dtype == torch.float32
        np.testing.assert_allclose(ours[key].numpy(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_median_matches_flower(n: int) -> None:
    states = _states(n, seed=n)
    _close(_agg(states, "median"), aggregate_median(_as_numpy(states)))


@pytest.mark.parametrize(("n", "beta"), [(1, 0.2), (5, 0.2), (10, 0.2), (10, 0.0), (9, 0.45)])
def test_trimmed_mean_matches_flower(n: int, beta: float) -> None:
    states = _states(n, seed=10 + n)
    ours = _agg(states, "trimmed-mean", trim_fraction=beta)
    _close(ours, aggregate_trimmed_avg(_as_numpy(states), beta))


@pytest.mark.parametrize(("n", "f"), [(1, 0), (3, 0), (5, 1), (7, 2), (10, 1), (4, 3)])
def test_krum_picks_the_reply_flower_picks(n: int, f: int) -> None:
    states = _states(n, seed=20 + n)
    ours = _agg(states, "krum", byzantine=f)
    _close(ours, aggregate_krum(_as_numpy(states), f, 0))
    # One client's tensors exactly, not a blend.
    assert any(torch.equal(ours["a"], s["a"]) and torch.equal(ours["b"], s["b"]) for s, _ in states)


def _one(values: list[float], counts: list[int] | None = None, **kw):
    counts = counts or [1] * len(values)
    states = [({"x": torch.tensor([v])}, c) for v, c in zip(values, counts, strict=True)]
    return float(_agg(states, **kw)["x"])


def test_rules_by_hand() -> None:
    assert _one([1.0, 2.0, 100.0], rule="median") == 2.0
    assert _one([1.0, 2.0, 4.0, 100.0], rule="median") == 3.0  # mean of the two middle values
    # floor(0.2 x 5) = 1 dropped at each end: mean of 2, 3, 4.
    assert _one([100.0, 2.0, 3.0, 4.0, -50.0], rule="trimmed-mean", trim_fraction=0.2) == 3.0
    # floor(0.2 x 4) = 0: nothing dropped.
    assert _one([1.0, 2.0, 3.0, 10.0], rule="trimmed-mean", trim_fraction=0.2) == 4.0
    # Krum, f = 0: the point whose n - 2 = 2 nearest others are closest in sum.
    assert _one([0.0, 1.0, 2.0, 9.0], rule="krum", byzantine=0) == 1.0
    assert _one([1.0, 3.0], counts=[1, 3], rule="fedavg") == 2.5


def test_edges_by_hand() -> None:
    """One reply of one example is its own average; Krum with n = f + 2 still compares each
    reply with its nearest neighbour (at least one), so the outlier listed first is not picked."""
    assert _one([3.0], counts=[1], rule="fedavg") == 3.0
    assert _one([5.0, 0.0, 0.3], rule="krum", byzantine=1) == 0.0


def test_weighted_mean_skips_missing_non_finite_and_uncounted_values() -> None:
    values = [(1.0, 2), (None, 5), (float("nan"), 5), (float("inf"), 1), (7.0, 0), (4.0, 1)]
    assert weighted_mean(values) == 2.0
    assert math.isnan(weighted_mean([(None, 3), (float("nan"), 2)]))


def test_robust_rules_ignore_claimed_counts() -> None:
    """A count is a claim: a poisoner claiming a huge one moves FedAvg, not the robust rules."""
    values, counts = [1.0, 1.1, 0.9, 50.0], [10, 10, 10, 10_000]
    assert _one(values, counts, rule="fedavg") > 40
    for rule in ("median", "trimmed-mean", "krum"):
        assert 0.9 <= _one(values, counts, rule=rule, trim_fraction=0.25, byzantine=1) <= 1.1


def test_one_poisoned_reply_cannot_move_the_robust_rules_out_of_the_honest_range() -> None:
    g = torch.Generator().manual_seed(3)
    honest = [({"s": 1.0 + 0.01 * torch.randn(16, generator=g)}, 10) for _ in range(6)]
    poison = ({"s": torch.full((16,), 1e4)}, 10)
    lo = torch.stack([s["s"] for s, _ in honest]).min(0).values
    hi = torch.stack([s["s"] for s, _ in honest]).max(0).values
    assert float(_agg([*honest, poison], "fedavg")["s"].max()) > 1e3
    for rule in ("median", "trimmed-mean", "krum"):
        out = _agg([*honest, poison], rule)["s"]
        assert bool(((out >= lo) & (out <= hi)).all()), rule


def test_unknown_rule_and_nothing_to_aggregate_raise() -> None:
    with pytest.raises(ValueError, match="unknown aggregation"):
        _agg(_states(3), "mean-of-best")
    for rule in ("fedavg", "median", "trimmed-mean", "krum"):
        with pytest.raises(ValueError):
            _agg([], rule)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum"])
def test_the_strategy_aggregates_with_the_configured_rule(rule: str) -> None:
    """Through the real screening: the poisoned reply passes every check (no norm rule set) and
    shifts FedAvg, but the configured robust rule keeps the global prompt among the honest."""
    honest = [reply(i, {"shared_ctx": torch.full(SHAPE, 1.0 + 0.01 * i)}) for i in range(1, 6)]
    poisoned = reply(9, {"shared_ctx": torch.full(SHAPE, 500.0)})
    plain = train_round(SharedPromptFedAvg({"shared_ctx": SHAPE}), [*honest, poisoned])
    assert float(plain.shared["shared_ctx"].max()) > 50
    robust = SharedPromptFedAvg({"shared_ctx": SHAPE}, aggregation=(rule, 0.2, 1))
    out = train_round(robust, [*honest, poisoned])
    assert out.report.ok == 6
    got = out.shared["shared_ctx"]
    assert float(got.min()) >= 1.0 and float(got.max()) <= 1.05


_DEFAULTS = {"server.min-nodes": 5, "data.num-clients": 10}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"server.aggregation": "mean"}, "server.aggregation must be one of"),
        ({"server.aggregation": "trimmed-mean", "server.trim-fraction": 0.5}, "trim-fraction"),
        ({"server.trim-fraction": -0.1}, "trim-fraction"),
        ({"server.trim-fraction": float("nan")}, "trim-fraction"),
        ({"server.krum-byzantine": -1}, "krum-byzantine"),
        ({"server.aggregation": "median", "server.dp": "server"}, "DP noise"),
        ({"server.aggregation": "krum", "server.krum-byzantine": 2}, "needs at least 7"),
    ],
)
def test_bad_aggregation_settings_fail_before_any_work(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_app_config({**_DEFAULTS, **overrides})


def test_good_aggregation_settings_parse_and_name_their_run() -> None:
    base = parse_app_config(_DEFAULTS)
    assert base.server.aggregation == "fedavg"
    krum = parse_app_config({**_DEFAULTS, "server.aggregation": "krum", "server.min-replies": 5})
    assert krum.server.krum_byzantine == 1
    assert krum.run_name != base.run_name  # another rule is another experiment
    # Keys at their defaults leave the digest as it was before they existed (no run renamed).
    info = section_roles(base.sections())
    before = {
        k: v
        for k, v in base.to_flat().items()
        if info[k].roles.in_name
        and not k.startswith(
            ("server.aggregation", "server.trim-", "server.krum-", "prompt.gate-lr")
        )
    }
    digest = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()
    assert base.run_name.endswith(digest[:6])
