"""Where a run's images live, decided once from the data config.

* :class:`ServerListed`: a dataset every party can list (a local folder copied to each node, a
  hub dataset, a cross-dataset union). The server knows every partition: it writes the manifest,
  bounds each client's claimed example counts and can score the global model itself.
* :class:`NodeLocal` (``data.partitioner=local``): each SuperNode reads only its own folder
  (node config ``data-root``); the server lists nothing and learns counts from replies.

Code that used to branch on ``partitioner == "local"`` asks the source instead.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from task.config import ConfigError
from task.config.data import DataConfig
from task.data.federation import (
    ClientData,
    Federation,
    build_federation,
    build_local_federation,
)


@dataclass(frozen=True)
class ExampleLimits:
    """Partition -> the most examples it can honestly report (empty: the server cannot know)."""

    train: dict[int, int] = field(default_factory=dict)
    evaluate: dict[int, int] = field(default_factory=dict)


_FEDERATIONS: dict[str, Federation] = {}


def get_federation(cfg: DataConfig) -> Federation:
    """The listed federation (every partitioner but ``local``), built once per process."""
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    if key not in _FEDERATIONS:
        _FEDERATIONS[key] = build_federation(cfg)
    return _FEDERATIONS[key]


def get_local_federation(cfg: DataConfig, root: str, partition_id: int) -> Federation:
    """One node's own client (data.partitioner=local), cached like get_federation."""
    key = json.dumps([dataclasses.asdict(cfg), root, partition_id], sort_keys=True)
    if key not in _FEDERATIONS:
        _FEDERATIONS[key] = build_local_federation(cfg, root, partition_id)
    return _FEDERATIONS[key]


class ServerListed:
    server_lists = True

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    def federation(self) -> Federation:
        return get_federation(self.cfg)

    def class_names(self) -> list[str]:
        """data.class-names when given (no listing needed), else the listed label space."""
        return self.cfg.class_name_list() or self.federation().class_names

    def client(self, partition_id: int) -> tuple[Federation, ClientData]:
        fed = self.federation()
        return fed, fed.client(partition_id)

    def example_limits(self, epochs: int) -> ExampleLimits:
        """The most examples each partition can honestly report: train max(1, epochs) x its
        train split (as task.local.train counts them), evaluate its test split."""
        fed = self.federation()
        epochs = max(1, int(epochs))
        return ExampleLimits(
            train={c.client_id: epochs * len(c.train) for c in fed.clients},
            evaluate={c.client_id: len(c.test) for c in fed.clients},
        )


class NodeLocal:
    server_lists = False

    def __init__(self, cfg: DataConfig, node_root: str = "") -> None:
        self.cfg = cfg
        self.node_root = node_root

    def federation(self) -> Federation:
        raise ConfigError(
            "data.partitioner=local has no federation-wide listing (each node reads its own "
            "node config data-root); this code path needs the data. Fix: use another "
            "data.partitioner with data.root, or run this on a node"
        )

    def class_names(self) -> list[str]:
        return self.cfg.class_name_list()

    def client(self, partition_id: int) -> tuple[Federation, ClientData]:
        if not self.node_root:
            raise ConfigError(
                "data.partitioner=local but this node has no data-root. Fix: start the "
                'SuperNode with --node-config "partition-id=N data-root=/path/to/images" '
                "(its own <root>/<class>/<image> folder)"
            )
        fed = get_local_federation(self.cfg, self.node_root, partition_id)
        return fed, fed.client(partition_id)

    def example_limits(self, epochs: int) -> ExampleLimits:
        return ExampleLimits()  # the server cannot list the nodes' folders: bounded by ratio


def data_source(cfg: DataConfig, node_root: str = "") -> ServerListed | NodeLocal:
    """The source for this data config (``node_root``: the node's own folder, local mode)."""
    return NodeLocal(cfg, node_root) if cfg.partitioner == "local" else ServerListed(cfg)


def run_class_names(cfg: DataConfig) -> list[str]:
    """The run's label space, as the server knows it (no data read in local mode)."""
    return data_source(cfg).class_names()
