"""Flower ServerApp: shared-only FedAvg over the prompt learners of the clients.

Thin adapter: the round loop lives in server_app.loop, the ML in task/.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server_app.loop import run_server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the experiment configured by the run config."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per log push otherwise
    run_server(grid, dict(context.run_config))
