"""Split a labelled listing over clients with flwr-datasets partitioners, then per client
into a stratified train/test split. Everything is seeded; nothing depends on hash seeds or
filesystem order (callers pass records sorted by image_id).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from task.data.errors import DataError

if TYPE_CHECKING:  # imported where used: ~1.5 s of start-up a deployed ClientApp with
    import datasets  # data.partitioner=local never needs (docs/performance.md)
    from flwr_datasets.partitioner import Partitioner

# What to change when a partitioner cannot satisfy its constraints (used in every DataError).
PARTITION_HINTS: dict[str, str] = {
    "even": "lower data.num-clients (each client needs >= 2 images) or add images",
    "quantity-skew": "lower data.num-clients or data.min-client-size, or raise data.alpha",
    "dirichlet": "raise data.alpha, lower data.num-clients or data.min-client-size",
    "pathological": "lower data.num-clients or data.classes-per-client, or use "
    "data.class-assignment=deterministic",
}


def _quantity_skew_sizes(n: int, k: int, alpha: float, min_size: int, seed: int) -> list[int]:
    """Client sizes ~ Dirichlet(alpha) on top of a floor of `min_size` each; they sum to n."""
    spare = n - k * min_size
    if spare < 0:
        raise DataError(
            f"quantity-skew needs >= {min_size} images per client x {k} clients = "
            f"{k * min_size}, but there are {n}. Fix: lower data.num-clients or "
            "data.min-client-size"
        )
    props = np.random.default_rng(seed).dirichlet(np.full(k, float(alpha)))
    raw = props * spare
    extra = np.floor(raw).astype(np.int64)
    leftover = int(spare - extra.sum())
    order = sorted(range(k), key=lambda i: (-(raw[i] - extra[i]), i))
    for i in order[:leftover]:
        extra[i] += 1
    return [int(min_size + e) for e in extra]


def partition_indices(
    labels: Sequence[int],
    num_clients: int,
    partitioner: str,
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    class_assignment: str = "first-deterministic",
    min_client_size: int = 2,
) -> list[list[int]]:
    """Indices into `labels` for each client (sorted), using flwr-datasets partitioners."""
    n = len(labels)
    if num_clients < 1:
        raise DataError(f"{num_clients} clients. Fix: set data.num-clients >= 1")
    if num_clients > n:
        raise DataError(f"{num_clients} clients but only {n} images. Fix: lower data.num-clients")
    if min_client_size < 1 and partitioner in ("quantity-skew", "dirichlet"):
        raise DataError(
            f"min client size {min_client_size}. Fix: set data.min-client-size >= 2 "
            "(each client needs >= 1 train and >= 1 test image)"
        )
    if partitioner not in PARTITION_HINTS:
        raise DataError(
            f"unknown partitioner {partitioner!r}. Fix: use even, quantity-skew, "
            "dirichlet or pathological"
        )
    import datasets

    ds = datasets.Dataset.from_dict(
        {"idx": np.arange(n, dtype=np.int64), "label": np.asarray(labels, dtype=np.int64)}
    )
    try:
        part = _partitioner(
            ds,
            num_clients,
            partitioner,
            seed,
            alpha,
            min_client_size,
            classes_per_client,
            class_assignment,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [
                sorted(int(i) for i in part.load_partition(c)["idx"]) for c in range(num_clients)
            ]
    except DataError:
        raise
    except Exception as err:  # flwr-datasets raises ValueError, sometimes others: same fix
        raise DataError(
            f"{partitioner} partitioning of {n} images over {num_clients} clients failed "
            f"({type(err).__name__}: {err}). Fix: {PARTITION_HINTS[partitioner]}"
        ) from err


def _partitioner(
    ds: datasets.Dataset,
    num_clients: int,
    partitioner: str,
    seed: int,
    alpha: float,
    min_client_size: int,
    classes_per_client: int,
    class_assignment: str,
) -> Partitioner:
    """The configured flwr-datasets partitioner, with its dataset set (constructors validate
    their arguments and may raise ValueError, so this runs inside the caller's try)."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        SizePartitioner,
    )

    if partitioner == "even":
        part: Partitioner = IidPartitioner(num_partitions=num_clients)
        # imagefolder order is sorted by class: shuffle before the contiguous IID shards
        part.dataset = ds.shuffle(seed=seed)
    elif partitioner == "quantity-skew":
        sizes = _quantity_skew_sizes(len(ds), num_clients, alpha, min_client_size, seed)
        part = SizePartitioner(partition_sizes=sizes)
        part.dataset = ds.shuffle(seed=seed)
    elif partitioner == "dirichlet":
        part = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=min_client_size,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
        part.dataset = ds
    else:
        part = PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=classes_per_client,
            class_assignment_mode=class_assignment,  # type: ignore[arg-type]
            shuffle=True,
            seed=seed,
        )
        part.dataset = ds
    return part


def stratified_split(
    indices: Sequence[int],
    labels: Sequence[int],
    test_fraction: float,
    seed: int | Sequence[int],
) -> tuple[list[int], list[int]]:
    """Split one client's indices into (train, test), keeping class proportions.

    The test size is round(n * test_fraction) clamped to [1, n - 1]; it is shared out over
    classes by largest remainder (ties by label), so small classes stay on both sides when
    they can. Raises DataError if n < 2.
    """
    n = len(indices)
    if n < 2:
        raise DataError(
            f"a client has {n} image(s) to split; it needs >= 1 image on each side. Fix: lower "
            "data.num-clients (or data.val-fraction), or add images"
        )
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    by_class: dict[int, list[int]] = {}
    for i in sorted(indices):
        by_class.setdefault(int(labels[i]), []).append(int(i))
    classes = sorted(by_class)
    quota = {c: len(by_class[c]) * n_test / n for c in classes}
    take = {c: int(np.floor(quota[c])) for c in classes}
    leftover = n_test - sum(take.values())
    for c in sorted(classes, key=lambda c: (-(quota[c] - take[c]), c))[:leftover]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    for c in classes:
        members = by_class[c]
        order = rng.permutation(len(members))
        test.extend(members[j] for j in order[: take[c]])
        train.extend(members[j] for j in order[take[c] :])
    return sorted(train), sorted(test)
