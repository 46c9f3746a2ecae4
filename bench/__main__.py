"""``python -m bench``: the performance suite, then the tables in docs/performance.md.

Each part is its own module (and process, so one part's threads and memory do not colour the
next), writes ``bench/results/<part>.json`` and prints its table; ``bench.render`` then rewrites
the generated blocks of docs/performance.md. Parts (default: all; about an hour on 2 cores):

* ``local_step``  one local step: fast vs naive vs FLOP floor, OT on/off (bench.local_step)
* ``bytes``       serialised message sizes vs the shared payload, fp32/fp16 (bench.message_bytes)
* ``simulation``  whole `flwr run` simulations: split, memory, scaling (bench.simulation)
* ``deploy``      Deployment Engine vs simulation per-round time (bench.deploy_overhead)
* ``client_start`` a fresh ClientApp process: lean vs eager model load, imports before vs
  after the lean start (bench.client_start)

    python -m bench                                  # everything
    python -m bench --parts bytes,deploy             # some parts
    python -m bench --render                         # only rewrite docs/performance.md
    python -m bench.local_step --help                # a part's own options
"""

from __future__ import annotations

import argparse
import subprocess
import sys

PARTS = {
    "local_step": ["bench.local_step", "--wait-idle", "420"],
    "bytes": ["bench.message_bytes"],
    "simulation": ["bench.simulation", "--suite", "all"],
    "deploy": ["bench.deploy_overhead", "--nodes", "3", "--rounds", "4"],
    "client_start": ["bench.client_start"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {list(PARTS)}")
    ap.add_argument("--render", action="store_true", help="only regenerate docs/performance.md")
    ns = ap.parse_args(argv)
    failed = []
    if not ns.render:
        for part in filter(None, ns.parts.split(",")):
            if part not in PARTS:
                ap.error(f"unknown part {part!r}; use {list(PARTS)}")
            print(f"== bench part {part}: python -m {' '.join(PARTS[part])}", flush=True)
            if subprocess.run([sys.executable, "-m", *PARTS[part]]).returncode != 0:
                failed.append(part)
    from bench.render import main as render

    render()
    if failed:
        print(f"failed parts: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
