"""Soak benchmark: a long federated run (many rounds, 40 clients, tiny random CLIP) that records the
process's memory (RSS) and open file handles after every round. A benchmark, not a unit test.

It drives the real ServerApp round loop and the real ClientApp (every message goes through
``client_app.app.app``, private prompts written to and read from disk, feature cache on disk) over
testkit's in-process Grid, all in one process, so any leak in the server loop, the strategy, the
ClientApp, the private store, the feature cache or the run directory shows as growth here.

    python -m bench.soak --rounds 60 --clients 40            # prints a table and a verdict
    python -m bench.soak --rounds 200 --json soak.json       # also writes every sample

Growth is judged after a warm-up (first 10% of rounds, at least 3): RSS must not grow by more than
``--max-rss-growth-mb`` from the warm-up end to the last round, and the open file handles must
return to the same count every round.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--per-class", type=int, default=40, help="synthetic images per class (5)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--method", default="fedrsclip")
    ap.add_argument("--workdir", help="default: a temporary directory, removed afterwards")
    ap.add_argument("--json", help="write every per-round sample here")
    ap.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    ns = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    import torch

    import task.runs.run_dir as run_dir
    from client_app.app import app as client_app
    from server_app.loop import run_server
    from testkit.grid import InProcessGrid, task_identity
    from testkit.images import TINY_CLASSES, write_synthetic_images
    from testkit.models import save_tiny_clip
    from testkit.run_config import tiny_run_config

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # a line per round and phase otherwise
    tmp_ctx = tempfile.TemporaryDirectory(prefix="fedrsclip-soak-") if not ns.workdir else None
    work = Path(ns.workdir or tmp_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    model = save_tiny_clip(work / "tiny-clip")
    images = write_synthetic_images(work / "images", TINY_CLASSES, per_class=ns.per_class)
    cfg = tiny_run_config(
        work,
        model,
        images,
        num_clients=ns.clients,
        **{
            "method.name": ns.method,
            "data.partitioner": "even",
            "server.num-rounds": ns.rounds,
            "server.eval-every": ns.eval_every,
            "run.name": "soak",
        },
    )

    samples: list[dict] = []
    t0 = time.perf_counter()
    original = run_dir.RunDir.append_metrics

    def sampled(self, record):  # after every completed round
        original(self, record)
        samples.append(
            {
                "round": record["round"],
                "rss_mb": round(rss_mb(), 1),
                "open_fds": open_fds(),
                "threads": threading.active_count(),
                "clients_ok": record.get("clients_ok"),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        s = samples[-1]
        if s["round"] == 1 or s["round"] % max(1, ns.rounds // 20) == 0:
            print(
                f"round {s['round']:4d}  rss {s['rss_mb']:7.1f} MB  fds {s['open_fds']:3d}  "
                f"threads {s['threads']:2d}  ok {s['clients_ok']}  t {s['seconds']:6.1f}s",
                flush=True,
            )

    run_dir.RunDir.append_metrics = sampled
    print(f"soak: {ns.clients} clients x {ns.rounds} rounds ({ns.method}), workdir {work}")
    print(f"start: rss {rss_mb():.1f} MB  fds {open_fds()}", flush=True)

    class Grid(InProcessGrid):
        """InProcessGrid without its message log (tests keep every message; a soak must not)."""

        messages = 0

        def send_and_receive(self, messages, *, timeout=None):
            out = super().send_and_receive(messages, timeout=timeout)
            Grid.messages += len(self.sent)
            self.sent.clear()
            self.replies.clear()
            return out

    grid = Grid(client_app, cfg, ns.clients)
    try:
        with task_identity():
            run_server(grid, cfg)
    finally:
        run_dir.RunDir.append_metrics = original

    warm = max(3, ns.rounds // 10)
    after = [s for s in samples if s["round"] >= warm]
    growth = after[-1]["rss_mb"] - after[0]["rss_mb"]
    peak = max(s["rss_mb"] for s in after)
    fds = sorted({s["open_fds"] for s in after})
    ok = growth <= ns.max_rss_growth_mb and len(fds) == 1
    summary = {
        "clients": ns.clients,
        "rounds": ns.rounds,
        "messages": Grid.messages,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "rss_mb_round_1": samples[0]["rss_mb"],
        f"rss_mb_round_{warm}": after[0]["rss_mb"],
        "rss_mb_last": after[-1]["rss_mb"],
        "rss_mb_peak_after_warmup": peak,
        "rss_growth_after_warmup_mb": round(growth, 1),
        "open_fds_after_warmup": fds,
        "threads_last": samples[-1]["threads"],
        "verdict": "no growth" if ok else "GROWTH",
    }
    print(json.dumps(summary, indent=1))
    if ns.json:
        Path(ns.json).write_text(json.dumps({"summary": summary, "samples": samples}, indent=1))
    if tmp_ctx is not None:
        tmp_ctx.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
