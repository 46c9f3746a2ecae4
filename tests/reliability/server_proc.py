"""A ServerApp process for the kill test: the real round loop and ClientApps over the in-process
Grid, in a process of its own that the test can SIGKILL.

    python -m tests.reliability.server_proc <run-config.json> [seconds-per-message]
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from client_app.app import app as client_app
from server_app.loop import run_server
from testkit.grid import InProcessGrid, task_identity


class SlowGrid(InProcessGrid):
    """Delivers like InProcessGrid, sleeping before each message (widens the kill window)."""

    delay = 0.0

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            time.sleep(self.delay)
            out += super().send_and_receive([msg], timeout=timeout)
        return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = json.loads(Path(sys.argv[1]).read_text())
    SlowGrid.delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    with task_identity():
        run_server(SlowGrid(client_app, cfg, cfg["data.num-clients"]), cfg)
    print("server finished", flush=True)


if __name__ == "__main__":
    main()
