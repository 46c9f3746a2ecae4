"""An in-process Grid: the real ServerApp loop and ClientApp handlers, no SuperLink (used by the
tests and by bench.message_bytes / bench.soak).

Every message goes through the real ClientApp object (its @app.train / @app.evaluate), so these
tests exercise the same code as `flwr run`; only transport and process boundaries are skipped.
``tamper`` may rewrite replies (to test validation); every reply is recorded in ``replies``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flwr.app import DEFAULT_TTL, Context, Error, Message, Metadata, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


@contextmanager
def task_identity(run_id: int = 1, node_id: int = 0, task_id: int = 0) -> Iterator[None]:
    """Set Flower's process identity so strategies can build messages outside a run."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class InProcessGrid(Grid):
    """Delivers each message to ``client_app`` with the destination node's Context."""

    def __init__(
        self,
        client_app: Any,
        run_config: dict[str, Any],
        num_nodes: int,
        node_config: dict[str, Any] | None = None,
        tamper: Callable[[int, Message], Message] | None = None,
        fail_after: int | None = None,
        first_node_id: int = 101,
    ) -> None:
        """``first_node_id``: node ids are first_node_id + 7 i for partition i (another value
        plays a restarted federation, whose nodes have new ids)."""
        self.app = client_app
        self.node_ids = [first_node_id + 7 * i for i in range(num_nodes)]
        self.contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                node_config={"partition-id": i, "num-partitions": num_nodes, **(node_config or {})},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, nid in enumerate(self.node_ids)
        }
        self.tamper = tamper
        self.fail_after = fail_after  # raise after this many delivered messages (a crash)
        self.delivered = 0
        self.sent: list[Message] = []
        self.replies: list[Message] = []

    # Unused parts of the Grid interface.
    def set_run(self, run: Any) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = []
        for msg in messages:
            if self.fail_after is not None and self.delivered >= self.fail_after:
                raise KeyboardInterrupt("simulated interruption")
            self.delivered += 1
            dst = msg.metadata.dst_node_id
            delivered = Message(
                content=msg.content,
                metadata=Metadata(
                    run_id=1,
                    message_id=uuid.uuid4().hex,
                    src_node_id=0,
                    dst_node_id=dst,
                    reply_to_message_id="",
                    group_id=msg.metadata.group_id,
                    created_at=time.time(),
                    ttl=DEFAULT_TTL,
                    message_type=msg.metadata.message_type,
                ),
            )
            self.sent.append(delivered)
            try:
                reply = self.app(delivered, self.contexts[dst])
            except Exception as err:  # noqa: BLE001 (as Flower: a client error becomes a reply)
                reply = Message(
                    Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=delivered
                )
            if self.tamper is not None:
                reply = self.tamper(dst, reply)
            self.replies.append(reply)
            out.append(reply)
        return out
