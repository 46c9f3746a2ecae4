"""pFedMoAP's server side: every client's latest prompt, and the experts each client receives in
its own message (per-node content with Flower's Message API).

The router keeps, per partition, the last prompt that passed the reply checks, picks for each
node the ``prompt.experts`` - 1 partitions nearest to that node's own prompt
(task.methods.pfedmoap.nearest_experts) and adds them to that node's message as ``expert_ctx``.
Nodes are known by the partition id of their replies; a resumed run asks each node for it first
(a ``query`` message), so it sends exactly what an uninterrupted run would have sent. The prompts
are saved with every round's checkpoint (``checkpoints/experts-r<round>.safetensors``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from protocol.keys import ARRAYS, METRICS, PARTITION_ID
from protocol.messages import from_record, to_record
from server_app.reply_rules import Reply
from server_app.transport import send_and_receive
from task.methods.pfedmoap import EXPERT_KEY, nearest_experts
from task.runs.run_dir import RunDir

log = logging.getLogger(__name__)
EXPERTS_FILE = "experts"  # checkpoints/experts-r<round>.safetensors


class ExpertRouter:
    """Latest prompt per partition; the experts of each node's message."""

    def __init__(self, run: RunDir, count: int, key: str, fp16: bool) -> None:
        self.run, self.count, self.key, self.fp16 = run, int(count), key, fp16
        self.latest: dict[int, torch.Tensor] = {}
        self.partition_of: dict[int, int] = {}  # node id -> partition id

    def resume(self, done: int) -> None:
        """The prompts as they were after round ``done`` (none before round 1)."""
        if done > 0:
            state = self.run.load_extra(EXPERTS_FILE, done)
            self.latest = {int(k[1:]): v.float() for k, v in state.items()}

    def learn_nodes(self, grid: Grid, timeout: float) -> None:
        """Ask every node its partition id (a resumed run has replies from no node yet)."""
        if not self.latest:
            return
        messages = [
            Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
            for node in grid.get_node_ids()
        ]
        for reply in send_and_receive(grid, messages, timeout):
            if reply.has_error() or not reply.has_content():
                continue
            pid = reply.content.metric_records.get(METRICS, {}).get(PARTITION_ID)
            if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
                self.partition_of[reply.metadata.src_node_id] = pid

    def attach(self, messages: Iterable[Message]) -> None:
        """Add to each node's message the experts chosen for its partition (none for a node
        whose partition has no prompt yet: it trains without experts, as pFedMoAP's first
        round)."""
        for msg in messages:
            pid = self.partition_of.get(msg.metadata.dst_node_id)
            chosen = [] if pid is None else nearest_experts(self.latest, pid, self.count)
            if not chosen:
                continue
            arrays = from_record(msg.content[ARRAYS])
            arrays[EXPERT_KEY] = torch.stack([self.latest[p] for p in chosen])
            content = RecordDict(dict(msg.content.items()))
            content[ARRAYS] = to_record(arrays, self.fp16)
            msg.content = content

    def update(self, kept: Iterable[Reply], server_round: int) -> None:
        """Remember the prompts of the replies that were averaged in; save them for resume."""
        for reply in kept:
            self.partition_of[reply.node] = reply.partition_id
            self.latest[reply.partition_id] = reply.tensors[self.key].detach().float().clone()
        state = {f"p{pid}": t for pid, t in sorted(self.latest.items())}
        self.run.save_extra(EXPERTS_FILE, server_round, state)
