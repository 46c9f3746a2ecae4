"""Bad configuration fails early and clearly; property-based tests (hypothesis) of the run-config
parsers and the partitioners (issue 8)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from task.config import ConfigError, parse_app_config, parse_run_config, to_flat
from task.data.errors import DataError
from task.data.partition import partition_indices
from task.model.backbone import BackboneNotFoundError

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
DEFAULTS = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)


# -- examples ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("server.min-replies", -1, "server.min-replies"),
        ("server.min-replies", 3, "min-replies .* > server.min-nodes"),
        ("server.min-replies", 1.5, "int"),
        ("server.max-norm-ratio", 0.5, "max-norm-ratio"),
        ("server.max-norm-ratio", -1.0, "max-norm-ratio"),
        ("server.max-norm-ratio", float("nan"), "max-norm-ratio"),
        ("server.max-examples-ratio", 0.5, "max-examples-ratio"),
        ("server.max-examples-ratio", -1.0, "max-examples-ratio"),
        ("server.max-examples-ratio", float("inf"), "max-examples-ratio"),
        ("server.dp", "local", "server.dp"),
        ("server.dp-clipping-norm", 0.0, "dp-clipping-norm"),
        ("server.dp-noise-multiplier", -0.1, "dp-noise-multiplier"),
        ("server.timeout", float("nan"), "server.timeout"),
        ("client.on-corrupt", "ignore", "on-corrupt"),
        ("client.on-corupt", "error", "unknown"),
        ("server.num-rounds", "3", "int"),
        ("server.num-rounds", True, "int"),
        ("data.num-clients", 0, "num-clients"),
        ("train.epochs", 1.5, "train.epochs"),
        ("bogus", 1, "unknown"),
        # Found by probes (issue 25): non-finite or absurd numbers, unknown devices, names.
        ("train.lr", float("nan"), "train.lr must be a finite number"),
        ("loss.alpha", float("inf"), "loss.alpha must be a finite number"),
        ("prompt.init-std", float("nan"), "prompt.init-std must be a finite number"),
        ("train.momentum", -5.0, "train.momentum must be in"),
        ("train.momentum", 7.0, "train.momentum must be in"),
        ("train.weight-decay", -0.1, "train.weight-decay must be >= 0"),
        ("loss.ot-tol", -1e-6, "loss.ot-tol must be in"),
        ("server.dp-noise-multiplier", 1e300, "server.dp-noise-multiplier must be in"),
        ("server.min-nodes", 11, "server.min-nodes \\(11\\) > data.num-clients"),
        ("model.device", "tpu", "model.device must be"),
        ("run.name", "a\x00b", "run.name must be"),
        ("run.name", "..\\up", "run.name must be"),
        ("run.name", ".hidden", "run.name must be"),
    ],
)
def test_bad_values_fail_with_the_key_named(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_app_config({**DEFAULTS, key: value})


@pytest.mark.slow
def test_impossible_setups_fail_before_any_work(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """More clients than images, a missing model directory: clear errors, nothing written."""
    from tests.reliability.helpers import run, setup_run

    cfg = setup_run(tmp_path, tiny_clip_dir, num_clients=3)
    runs = Path(cfg["run.dir"])
    with pytest.raises(DataError, match="num-clients"):
        run({**cfg, "data.num-clients": 500, "server.min-nodes": 3}, num_nodes=3)
    with pytest.raises(BackboneNotFoundError, match="does not exist"):
        run({**cfg, "model.name": str(tmp_path / "no-such-model")})
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(BackboneNotFoundError, match="config.json"):
        run({**cfg, "model.name": str(empty)})
    assert not runs.exists(), "a failed preflight must not create the run directory"
    assert not Path(cfg["client.private-dir"]).exists()


# -- properties of the parsers -----------------------------------------------------------------
@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(DEFAULTS)), scalars, max_size=6))
def test_app_config_parses_or_raises_config_error(overrides: dict) -> None:
    """Any mix of known keys and arbitrary scalars: a valid config or a ConfigError that names
    one of the keys, never another exception; a valid one round-trips through to_flat."""
    flat = {**DEFAULTS, **overrides}
    try:
        cfg = parse_app_config(flat)
    except ConfigError as err:
        assert any(k.split(".")[0] in str(err) for k in DEFAULTS), str(err)
        return
    again = parse_app_config(cfg.to_flat())
    assert again.to_flat() == cfg.to_flat()
    for key, value in overrides.items():
        got = cfg.to_flat()[key]
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(got, float) and math.isnan(got)
        else:
            assert got == value


@SETTINGS
@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-._", min_size=1, max_size=20),
    scalars,
)
def test_unknown_keys_are_always_rejected(key: str, value: object) -> None:
    assume(key not in DEFAULTS and key.replace("_", "-") not in DEFAULTS)
    assume(key.replace("-", "_").replace("_", "-") not in DEFAULTS)
    with pytest.raises(ConfigError):
        parse_app_config({key: value})


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from([k for k in DEFAULTS if not k.startswith(("server.", "run.", "client."))]),
        scalars,
        max_size=5,
    )
)
def test_core_parser_total_and_round_trips(overrides: dict) -> None:
    flat = {k: v for k, v in DEFAULTS.items() if not k.startswith(("server.", "run.", "client."))}
    flat.update(overrides)
    try:
        cfg = parse_run_config(flat)
    except ConfigError:
        return
    assert to_flat(parse_run_config(to_flat(cfg))) == to_flat(cfg)
    assert dataclasses.asdict(parse_run_config(to_flat(cfg))) == dataclasses.asdict(cfg) or any(
        isinstance(v, float) and math.isnan(v) for v in overrides.values()
    )


# -- properties of the partitioners -----------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=80),
    num_clients=st.integers(1, 12),
    partitioner=st.sampled_from(["even", "quantity-skew", "dirichlet", "pathological"]),
    seed=st.integers(0, 2**16),
    alpha=st.floats(0.05, 50.0),
    # >= 1: data.min-client-size is validated >= 2; with 0, SizePartitioner raises a bare
    # ValueError for quantity-skew (reported; task/data is not ours to change).
    min_size=st.integers(1, 4),
    classes_per_client=st.integers(1, 6),
)
def test_partitions_are_disjoint_deterministic_and_sized(
    labels, num_clients, partitioner, seed, alpha, min_size, classes_per_client
) -> None:
    kw = dict(
        seed=seed,
        alpha=alpha,
        classes_per_client=classes_per_client,
        class_assignment="deterministic",
        min_client_size=min_size,
    )
    try:
        parts = partition_indices(labels, num_clients, partitioner, **kw)
    except DataError as err:
        assert "Fix:" in str(err)
        return
    n = len(labels)
    assert len(parts) == num_clients
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)), "an index was given to two clients"
    assert all(0 <= i < n for i in flat)
    assert all(p == sorted(p) for p in parts)
    if partitioner != "pathological":
        assert sorted(flat) == list(range(n)), "every image goes to exactly one client"
    else:  # each client only holds its assigned classes (at most classes-per-client)
        assert all(len({labels[i] for i in p}) <= classes_per_client for p in parts)
    if partitioner == "even":
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
    if partitioner in ("quantity-skew", "dirichlet"):
        assert all(len(p) >= min_size for p in parts)
    assert partition_indices(labels, num_clients, partitioner, **kw) == parts  # deterministic
