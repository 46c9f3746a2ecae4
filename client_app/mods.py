"""ClientApp mods and assembly shared by the per-message entry and the in-process app (no torch
imported)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

FAULT_ENV = "FEDRSCLIP_FAULT"  # tests only: see testkit.faults
Handler = ClientAppCallable


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod, for train messages that carry a clipping norm (server.dp =
    "client"); every other message passes through untouched."""
    if msg.metadata.message_type == MessageType.TRAIN and msg.has_content():
        configs = msg.content.config_records.values()
        if any(KEY_CLIPPING_NORM in c for c in configs):
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def assemble(
    train: Handler, evaluate: Handler, query: Handler, extra_mods: Sequence[Mod] = ()
) -> ClientApp:
    """A ClientApp of these handlers behind the DP clipping mod (``extra_mods``: e.g.
    testkit.faults)."""
    client_app = ClientApp(mods=[dp_clipping_mod, *extra_mods])
    client_app.train()(train)
    client_app.evaluate()(evaluate)
    client_app.query()(query)
    return client_app


def env_mods() -> list[Mod]:
    """The test fault injection when ``FEDRSCLIP_FAULT`` is set at import, else nothing."""
    if not os.environ.get(FAULT_ENV):
        return []
    from testkit.faults import fault_mod  # tests only: the fault injection lives there

    return [fault_mod]
