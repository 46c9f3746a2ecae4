"""Bit-identity check of a change that must not move any result: run one small federation per
method (3 clients, 2 rounds, the stand-in on UC Merced) with the code of a checkout, then compare
two such sets run for run, every metric of every round except wall-clock timings.

    python scripts/identity_check.py run --out /tmp/identity/before          # in checkout A
    python scripts/identity_check.py run --out /tmp/identity/after           # in checkout B
    python scripts/identity_check.py compare /tmp/identity/before /tmp/identity/after

``--inprocess`` runs them through the real ServerApp loop and ClientApp handlers in one process
(testkit's in-process Grid) instead of `flwr run`: in a simulation the clients import the code
of the directory the local SuperLink was started from, which may be another checkout.

``run`` uses the launcher in the current directory, so it exercises that checkout's code; every
run has its own feature cache and private store under ``--out`` (nothing is shared between the
two sets). ``compare`` exits 1 on the first difference and names it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PROMPT_METHODS = (
    "zeroshot,local,promptfl,fedprox,fedotp,fedpgp,fedrsclip,"
    "fedrsclip-noprivate,fedrsclip-nodpa,fedrsclip-noot"
)
# Wall-clock readings differ between any two runs; everything else must not.
TIMING_PREFIXES = ("time-", "time_", "at-", "train_at_", "eval_at_")
TIMING_SUFFIXES = ("_seconds", "_sent_at", "_received_at", "_s")


def is_timing(key: str) -> bool:
    return key.startswith(TIMING_PREFIXES) or key.endswith(TIMING_SUFFIXES)


def strip_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def launch(out: Path, methods: str, recipe: str, extra: list[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "server_app.launch",
        "-m",
        f"method={methods}",
        "federation=ucmerced_10",
        "++run_config.data.num-clients=3",
        "rounds=2",
        f"recipe={recipe}",
        f"run_config.run.dir={out / 'runs'}",
        f"run_config.cache.dir={out / 'cache'}",
        f"run_config.client.private-dir={out / 'private'}",
        "launch.continue_on_error=true",
        *extra,
    ]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


INPROCESS = r"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from client_app.app import app
from server_app.loop import run_server
from testkit.grid import InProcessGrid, task_identity
out, method, split = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
recipe = {"train.optimizer": "adamw", "train.lr": 0.01, "train.epochs": 1, "train.batch-size": 32,
          "loss.ot-iters": 20}
if method == "fedavg-full":
    recipe = {"train.optimizer": "adamw", "train.lr": 1e-4, "train.weight-decay": 0.1,
              "train.epochs": 1, "train.batch-size": 32}
cfg = {"model.name": str(Path("../shared/models/rs-lit-b0-minilm").resolve()),
       "data.root": str(Path("../shared/data/ucmerced").resolve()), "data.num-clients": 3,
       "server.num-rounds": 2, "server.min-nodes": 2, "method.name": method,
       "cache.dir": str(out / "cache"), "client.private-dir": str(out / "private"),
       "run.dir": str(out / "runs"), "run.name": f"{method}-{split}", **recipe}
if split == "dirichlet0.1":
    cfg.update({"data.partitioner": "dirichlet", "data.alpha": 0.1, "data.min-client-size": 10})
with task_identity():
    run_server(InProcessGrid(app, cfg, 3), cfg)
"""


def run_inprocess(out: Path, with_full: bool) -> int:
    """The same federations through the real ServerApp loop and ClientApp handlers in one
    process (testkit's Grid): no SuperLink, so no doubt about whose code the clients run."""
    out.mkdir(parents=True, exist_ok=True)
    methods = PROMPT_METHODS.split(",") + (["fedavg-full"] if with_full else [])
    rc = 0
    for split in ("even", "dirichlet0.1"):
        for method in methods:
            if method == "fedavg-full" and split != "even":
                continue
            print(f"+ {method} {split}", flush=True)
            rc = rc or subprocess.call([sys.executable, "-c", INPROCESS, str(out), method, split])
    return rc


def run(out: Path, with_full: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rc = launch(out, PROMPT_METHODS, "standin", [])
    rc = rc or launch(out, PROMPT_METHODS, "standin", ["split=dirichlet0.1"])
    if with_full:
        rc = rc or launch(out, "fedavg-full", "fullft-standin", [])
    return rc


def metrics_of(root: Path) -> dict[str, list[dict[str, Any]]]:
    runs = {}
    for path in sorted((root / "runs").glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        runs[path.parent.name] = [strip_timings(r) for r in rows]
    return runs


def compare(a: Path, b: Path) -> int:
    left, right = metrics_of(a), metrics_of(b)
    if not left:
        print(f"no runs under {a}/runs")
        return 1
    if sorted(left) != sorted(right):
        print(
            f"different runs: only in {a}: {sorted(set(left) - set(right))}; "
            f"only in {b}: {sorted(set(right) - set(left))}"
        )
        return 1
    for name in left:
        if left[name] != right[name]:
            for i, (x, y) in enumerate(zip(left[name], right[name], strict=False)):
                if x != y:
                    keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
                    print(f"{name} round line {i}: differs in {keys}")
                    break
            else:
                print(f"{name}: {len(left[name])} vs {len(right[name])} lines")
            return 1
        print(f"identical: {name} ({len(left[name])} rounds)")
    print(f"all {len(left)} runs identical (timings aside)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the small federations with this checkout's code")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--no-full", action="store_true", help="skip fedavg-full (slow on CPU)")
    r.add_argument(
        "--inprocess", action="store_true", help="in one process (testkit's Grid), no SuperLink"
    )
    c = sub.add_parser("compare", help="compare two sets, timings aside")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        runner = run_inprocess if args.inprocess else run
        return runner(args.out.resolve(), not args.no_full)
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
