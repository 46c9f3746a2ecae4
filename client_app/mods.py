"""ClientApp mods shared by the per-message entry and the in-process app (no torch imported)."""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod, for train messages that carry a clipping norm (server.dp =
    "client"); every other message passes through untouched."""
    if msg.metadata.message_type == MessageType.TRAIN and msg.has_content():
        configs = msg.content.config_records.values()
        if any(KEY_CLIPPING_NORM in c for c in configs):
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
