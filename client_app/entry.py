"""The ClientApp Flower loads (``clientapp = "client_app.entry:app"``): a per-message front that
runs each message in the node's warm worker when ``client.warm-worker`` allows it, and otherwise
in this process with client_app.app's handlers (imported only then: a process whose message the
worker runs never imports torch).

``client.warm-worker`` (node config ``warm-worker`` overrides): ``off`` (the default; e.g. a
simulation, whose ClientApp processes stay alive anyway) runs in-process; ``auto`` forwards to
the worker in ``<private-dir>/.warm-worker`` and, when there is none, starts one for the next
message and runs this one in-process; ``external`` forwards when an operator-started worker is
there and never starts one. A message the worker cannot take (none, other code, it died) runs
in-process, with identical results. With test fault injection set (``FEDRSCLIP_FAULT``) every
message runs in-process, where the faults are.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.typing import Mod  # noqa: E402

from client_app import (
    timeline,  # before the rest: marks when importing began
    warm,  # noqa: E402
)
from client_app.mods import FAULT_ENV, assemble, env_mods  # noqa: E402
from task.config import apply_node_config, parse_app_config  # noqa: E402

log = logging.getLogger(__name__)


def _in_process(handler: str) -> Callable[[Message, Context], Message]:
    import client_app.app as handlers  # torch, transformers: paid only on this path

    return getattr(handlers, handler)


def _worker(context: Context) -> tuple[str, Path | None]:
    """This node's ``client.warm-worker`` mode and the worker's directory (None: in-process)."""
    if os.environ.get(FAULT_ENV):
        return "off", None
    cfg = apply_node_config(parse_app_config(dict(context.run_config)), context.node_config)
    mode = cfg.client.warm_worker
    if mode == "off":
        return mode, None
    directory = warm.worker_dir(cfg.client.private_dir)
    try:
        warm.prepare_dir(directory)
    except (OSError, warm.WorkerError) as err:
        log.warning("warm worker not used: %s", err)
        return mode, None
    return mode, directory


def _run(handler: str, msg: Message, context: Context) -> Message:
    mode, directory = _worker(context)
    if directory is not None:
        try:
            reply = warm.forward(directory, handler, msg, context, timeline.own_marks())
        except warm.WorkerError as err:  # never a failed message because of the worker
            log.warning("warm worker not used: %s", err)
            reply = None
        if reply is not None:
            return reply
        if mode == "auto" and warm.request(directory, "ping") is None:
            try:
                warm.spawn(directory)  # warm from the next message on
            except (OSError, warm.WorkerError) as err:
                log.warning("could not start a warm worker in %s: %s", directory, err)
    return _in_process(handler)(msg, context)


def train(msg: Message, context: Context) -> Message:
    return _run("train", msg, context)


def evaluate(msg: Message, context: Context) -> Message:
    return _run("evaluate", msg, context)


def query(msg: Message, context: Context) -> Message:
    return _run("query", msg, context)


def build_app(extra_mods: Sequence[Mod] = ()) -> ClientApp:
    """The per-message ClientApp (``extra_mods``: e.g. testkit.faults)."""
    return assemble(train, evaluate, query, extra_mods)


app = build_app(env_mods())
timeline.imports_done = time.time()
