"""Per-round wall time: simulation vs Deployment Engine (tiny random CLIP, synthetic images).

Same run config both ways; prints each round's ``round_seconds`` (from metrics.jsonl, measured by
the ServerApp around train + evaluate) and the 1-minute load average. Round 1 extracts the image
features (the cache is then on each node's disk); later rounds reuse it. In deployment every
message starts a fresh ClientApp process; in simulation Ray actors stay alive::

    python -m bench.deploy_overhead --nodes 3 --rounds 4   # -> bench/results/deploy_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))  # deploy_local

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _rounds(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [round(json.loads(line)["round_seconds"], 2) for line in lines]


def main(argv: list[str] | None = None) -> int:
    from deploy_local import LocalDeployment

    from testkit.flwr_run import run_flwr, to_toml
    from testkit.images import TINY_CLASSES, write_synthetic_images
    from testkit.models import save_tiny_clip
    from testkit.run_config import tiny_run_config

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--workdir", default="/tmp/fedrsclip-bench")
    p.add_argument("--only", choices=["simulation", "deployment"])
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "deploy_overhead.json"))
    ns = p.parse_args(argv)
    work = Path(ns.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clip = save_tiny_clip(work / "clip")
    images = write_synthetic_images(work / "images", TINY_CLASSES, per_class=ns.per_class)
    results = {}

    def config(tag: str) -> dict:
        cfg = tiny_run_config(work / tag, clip, images, num_clients=ns.nodes)
        cfg.update({"server.num-rounds": ns.rounds, "cache.dir": ".cache/features"})
        return cfg

    if ns.only in (None, "simulation"):
        (work / "sim").mkdir()
        cfg = config("sim")
        cfg["cache.dir"] = str(work / "sim" / "features")
        t0 = time.monotonic()
        run_flwr(work / "sim", cfg, num_supernodes=ns.nodes, timeout=1800)
        results["simulation"] = {
            "rounds": _rounds(work / "sim" / "runs" / "tiny"),
            "total_s": round(time.monotonic() - t0, 1),
            "load1": os.getloadavg()[0],
        }
        print(results["simulation"], flush=True)
    if ns.only in (None, "deployment"):
        (work / "dep").mkdir()
        cfg_file = work / "dep" / "run-config.toml"
        cfg_file.write_text(to_toml(config("dep")))
        with LocalDeployment(work / "dep" / "deploy", ns.nodes) as dep:
            t0 = time.monotonic()
            dep.up()
            res = dep.run(REPO, cfg_file, timeout=1800)
            if res.returncode != 0:
                print(res.stdout[-5000:])
                return 1
        results["deployment"] = {
            "rounds": _rounds(work / "dep" / "runs" / "tiny"),
            "total_s": round(time.monotonic() - t0, 1),
            "load1": os.getloadavg()[0],
        }
        print(results["deployment"], flush=True)
    if "simulation" in results and "deployment" in results:
        sim = statistics.median(results["simulation"]["rounds"][1:] or [float("nan")])
        dep = statistics.median(results["deployment"]["rounds"][1:] or [float("nan")])
        results["summary"] = {
            "median_round_after_first_s": {"simulation": sim, "deployment": dep},
            "deployment_overhead_per_round_s": round(dep - sim, 2),
            "deployment_over_simulation": round(dep / sim, 2) if sim else None,
        }
    doc = {
        "command": " ".join(["python -m bench.deploy_overhead", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "nodes": ns.nodes,
        "rounds": ns.rounds,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **results,
    }
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    print(f"wrote {out}")
    return 0


def markdown(doc: dict) -> str:
    """Per-round seconds both ways (round 1 extracts features; later rounds reuse the cache)."""
    out = ["| engine | round seconds | total (s) | load (1 min) |", "| --- | --- | --- | --- |"]
    for engine in ("simulation", "deployment"):
        if engine in doc:
            r = doc[engine]
            rounds = ", ".join(f"{x:.1f}" for x in r["rounds"])
            out.append(f"| {engine} | {rounds} | {r['total_s']} | {r['load1']:.2f} |")
    if "summary" in doc:
        s = doc["summary"]
        out.append("")
        out.append(
            f"Median later round: deployment {s['median_round_after_first_s']['deployment']:.1f} s"
            f" vs simulation {s['median_round_after_first_s']['simulation']:.1f} s: "
            f"{s['deployment_overhead_per_round_s']:.1f} s overhead per round "
            f"({s['deployment_over_simulation']}x)."
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
