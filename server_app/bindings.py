"""Node-to-partition binding: the first node seen with a partition id holds it for the run.

A node that claims another node's partition would otherwise get the honest node's update refused
as a duplicate every round, and borrow that partition's example-count limit. The binding is kept
in ``<run dir>/bindings.json`` and survives a resume. A federation whose nodes all have new ids
(a restarted simulation) starts a fresh binding; in a deployment, an operator who replaces a
node's machine re-binds its partition by deleting that entry from the file (docs/deploy.md).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)
BINDINGS_FILE = "bindings.json"


class PartitionBindings:
    """partition id -> node id, first sight wins."""

    def __init__(self, run_root: Path) -> None:
        self.path = run_root / BINDINGS_FILE
        self.node_of: dict[int, int] = {}
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
                self.node_of = {int(p): int(n) for p, n in raw.items()}
            except (ValueError, TypeError, AttributeError) as err:
                log.warning("ignoring unreadable %s (%s): binding afresh", self.path, err)

    def adopt(self, node_ids: Iterable[int]) -> None:
        """Keep the binding only if some bound node is still in the federation."""
        current = set(node_ids)
        if self.node_of and current and not current & set(self.node_of.values()):
            log.info(
                "no node of the earlier binding is connected (a restarted federation): "
                "partitions are bound afresh as nodes reply"
            )
            self.node_of = {}
            self._save()

    def check(self, partition: int, node: int, active: set[int] | None = None) -> str | None:
        """Why ``node`` may not report for ``partition`` (None: it may; binds on first sight).

        ``active``: the nodes this round's messages went to. A partition whose holder is no
        longer among them (a SuperNode that died and registered again under a new id) passes
        to the node that now reports it; while the holder is active, a second claimant is
        refused."""
        holder = self.node_of.get(partition)
        if holder is not None and holder != node:
            if active is None or holder in active:
                return (
                    f"partition-id {partition} is bound to node {holder} (first seen with it); "
                    f"node {node} claimed it"
                )
            log.warning(
                "partition %d: its node %d is gone; re-bound to node %d", partition, holder, node
            )
            holder = None
        held = next((p for p, n in self.node_of.items() if n == node), None)
        if held is not None and held != partition:
            return f"node {node} holds partition {held}, not {partition}"
        if holder is None:
            self.node_of[partition] = node
            self._save()
        return None

    def _save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps({str(p): n for p, n in sorted(self.node_of.items())}))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
