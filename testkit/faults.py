"""Fault injection for the reliability tests, as a ClientApp mod (never part of the app itself).

``FEDRSCLIP_FAULT="stage:partition:round[,...]"`` in the ClientApp's environment makes it fail on
purpose: stage ``train`` raises before training, ``save`` raises after the new private prompt was
fully written to a temporary file but before it replaces the last good one (a crash mid-write),
``hang`` stops making progress after the round is set up (so a test can kill its SuperNode);
``*`` matches any partition or round. client_app.app adds :func:`fault_mod` when the variable is
set at import (a `flwr run` or SuperNode started with it); in-process tests that set it later
build the app with ``client_app.app.build_app([fault_mod])``.

``hang`` writes ``<FEDRSCLIP_FAULT_MARKER>/hang-p<partition>-r<round>`` (holding the process id)
when that variable names a directory, then sleeps ``FEDRSCLIP_FAULT_HANG_S`` seconds (default 600)
and carries on normally.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from protocol.keys import CONFIG, PARTITION_ID, SERVER_ROUND
from task.local.private_store import PrivateStore

FAULT_ENV = "FEDRSCLIP_FAULT"
FAULT_MARKER_ENV = "FEDRSCLIP_FAULT_MARKER"
FAULT_HANG_ENV = "FEDRSCLIP_FAULT_HANG_S"


class InjectedFault(RuntimeError):
    """Raised on purpose by the FEDRSCLIP_FAULT test hook."""


def faults(stage: str, partition_id: int, server_round: int) -> bool:
    """Whether FEDRSCLIP_FAULT asks for ``stage`` at this partition and round."""
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"{FAULT_ENV} item {item!r} is not stage:partition:round")
        s, p, r = parts
        if s == stage and p in ("*", str(partition_id)) and r in ("*", str(server_round)):
            return True
    return False


def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Inject the faults FEDRSCLIP_FAULT names into train messages; others pass through."""
    if msg.metadata.message_type != MessageType.TRAIN or not os.environ.get(FAULT_ENV):
        return call_next(msg, context)
    partition_id = int(context.node_config.get(PARTITION_ID, -1))
    server_round = int(msg.content.config_records[CONFIG][SERVER_ROUND])
    if faults("train", partition_id, server_round):
        raise InjectedFault(f"injected fault: client {partition_id} train (FEDRSCLIP_FAULT)")
    if faults("hang", partition_id, server_round):
        _hang(partition_id, server_round)
    if not faults("save", partition_id, server_round):
        return call_next(msg, context)
    with _crash_before_replace():
        return call_next(msg, context)


@contextlib.contextmanager
def _crash_before_replace() -> Iterator[None]:
    """Every PrivateStore saved inside raises once its temporary file is fully written."""

    def crash(tmp: object) -> None:
        raise InjectedFault(f"injected fault: crash before saving {tmp} (FEDRSCLIP_FAULT)")

    PrivateStore.before_replace = staticmethod(crash)
    try:
        yield
    finally:
        PrivateStore.before_replace = None


def _hang(partition_id: int, server_round: int) -> None:
    marker_dir = os.environ.get(FAULT_MARKER_ENV, "")
    if marker_dir:
        marker = os.path.join(marker_dir, f"hang-p{partition_id}-r{server_round}")
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
    time.sleep(float(os.environ.get(FAULT_HANG_ENV, "600")))
