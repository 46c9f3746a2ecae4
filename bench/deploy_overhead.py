"""The time line of a deployment round, and what a round costs: Deployment Engine vs simulation.

Same run config every way (tiny random CLIP, synthetic images, 3 nodes on loopback): simulation,
then the Deployment Engine (SuperLink + SuperNodes as processes, ``scripts/deploy_local.py``) with
one message per round (``server.eval-mode=fused``, the default), the same with each node's warm
worker (``warm``: client.warm-worker=auto, client_app.worker) and with a separate evaluate
message (``separate``). Every ClientApp reply carries wall-clock marks (client_app/timeline.py)
and the server records when it sent a phase and when its last reply arrived, so each message's
life splits into:

* **queue + spawn**: server sends -> the ClientApp process starts (SuperLink, the SuperNode's
  poll of the SuperLink, the SuperNode starting a process);
* **python start**: process start -> its first import; **imports**: torch, transformers, Flower,
  this app; **to handler**: imports done -> the handler runs (Flower's runtime connection, the
  message pulled into the process);
* **model load**, **features** (cache load), **compute** (evaluate and/or train, save);
* **reply**: the reply is made -> the server has all replies (push, SuperLink, server pull).

The pure cost of starting a ClientApp process (Python + imports + model load + feature-cache
load, no message) is measured on its own, side by side::

    python -m bench.deploy_overhead --nodes 3 --rounds 4   # -> bench/results/deploy_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))  # deploy_local

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PHASES = (
    "queue_spawn", "python_start", "imports", "to_handler", "model_load", "features", "compute",
    "reply",
)  # fmt: skip
TARGET_ROUND_S = 8.0


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def timeline(rows: list[dict], phase: str = "train") -> dict[str, float]:
    """Median seconds of each part of a message's life over the clients of rounds 2.. (round 1
    extracts features and may find the SuperNodes' first poll anywhere in its 3 s)."""
    parts: dict[str, list[float]] = {p: [] for p in PHASES}
    for row in rows[1:]:
        sent, received = row.get(f"{phase}_sent_at"), row.get(f"{phase}_received_at")
        if sent is None:
            continue
        for values in row["per_client"].values():
            prefix = f"{phase}_at_"
            at = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
            if "reply" not in at:
                continue
            parts["queue_spawn"].append(at["process-start"] - sent)
            parts["python_start"].append(at["imports-start"] - at["process-start"])
            parts["imports"].append(at["imports-done"] - at["imports-start"])
            parts["to_handler"].append(at["handler-start"] - at["imports-done"])
            parts["model_load"].append(values.get(f"{phase}_backbone_s", 0.0))
            parts["features"].append(values.get(f"{phase}_features_s", 0.0))
            parts["compute"].append(values.get(f"{phase}_compute_s", 0.0))
            parts["reply"].append(received - at["reply"])
    return {p: round(statistics.median(v), 3) for p, v in parts.items() if v}


def process_start_cost(work: Path, cfg: dict, repeats: int = 3) -> dict[str, float]:
    """Seconds for a fresh Python process to import the ClientApp, load the model (text side)
    and one client's cached features: what every deployment message pays before any work."""
    code = textwrap.dedent(
        f"""
        import json, time
        t0 = time.perf_counter()
        import client_app.app  # noqa: F401
        t1 = time.perf_counter()
        from task.local.kinds import make_client
        from task.config import parse_app_config
        from task.local.private_store import PrivateStore
        cfg = parse_app_config(json.loads({json.dumps(json.dumps(cfg))}))
        client = make_client(cfg.core, 0, PrivateStore({str(work / "p")!r}, "x", 0))
        client.features("train"); client.features("test")
        t2 = time.perf_counter()
        print(json.dumps({{"imports": t1 - t0, "load": t2 - t1}}))
        """
    )
    walls, parts = [], []
    for _ in range(repeats + 1):  # the first one warms the disk cache and writes the features
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
        )
        walls.append(time.perf_counter() - t0)
        parts.append(json.loads(out.stdout.strip().splitlines()[-1]))
    walls, parts = walls[1:], parts[1:]
    return {
        "process_s": round(statistics.median(walls), 3),
        "imports_s": round(statistics.median(p["imports"] for p in parts), 3),
        "load_s": round(statistics.median(p["load"] for p in parts), 3),
    }


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
    p.add_argument(
        "--cases", nargs="+", default=["simulation", "fused", "warm", "separate"],
        choices=["simulation", "fused", "warm", "separate", "fused-poll1s"],
        help="fused: one message a round, each in its own ClientApp process; warm: the same "
        "with each node's warm worker (client.warm-worker=auto); fused-poll1s: fused with "
        "Flower's default SuperExec poll interval (1 s)",
    )  # fmt: skip
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "deploy_overhead.json"))
    ns = p.parse_args(argv)
    work = Path(ns.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clip = save_tiny_clip(work / "clip")
    images = write_synthetic_images(work / "images", TINY_CLASSES, per_class=ns.per_class)
    results: dict[str, dict] = {}

    def config(tag: str, mode: str) -> dict:
        cfg = tiny_run_config(work / tag, clip, images, num_clients=ns.nodes)
        cfg.update({"server.num-rounds": ns.rounds, "server.eval-mode": mode})
        return cfg

    start_cfg = config("start", "fused")
    start_cfg["cache.dir"] = str(work / "start" / "features")
    results["process_start"] = process_start_cost(work / "start", start_cfg)
    print("process start:", results["process_start"], flush=True)
    for case in ns.cases:
        t0 = time.monotonic()
        if case == "simulation":
            (work / case).mkdir()
            cfg = config(case, "fused")
            cfg["cache.dir"] = str(work / case / "features")
            run_flwr(work / case, cfg, num_supernodes=ns.nodes, timeout=1800)
        else:
            mode = "separate" if case == "separate" else "fused"
            env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"} if case.endswith("poll1s") else {}
            (work / case).mkdir()
            cfg = config(case, mode)
            cfg["cache.dir"] = ".cache/features"  # each node's node-config cache-dir wins
            cfg_file = work / case / "run-config.toml"
            cfg_file.write_text(to_toml(cfg))
            worker = "auto" if case == "warm" else "off"
            with LocalDeployment(
                work / case / "deploy", ns.nodes, env_extra=env, warm_worker=worker
            ) as dep:
                dep.up()
                res = dep.run(REPO, cfg_file, timeout=1800)
                if res.returncode != 0:
                    print(res.stdout[-5000:])
                    return 1
        rows = _rows(work / case / "runs" / "tiny")
        rounds = [round(r["round_seconds"], 2) for r in rows]
        results[case] = {
            "rounds": rounds,
            "median_round_after_first_s": statistics.median(rounds[1:] or [float("nan")]),
            "total_s": round(time.monotonic() - t0, 1),
            "load1": round(os.getloadavg()[0], 2),
            "timeline_train": timeline(rows, "train"),
            "timeline_evaluate": timeline(rows, "eval"),
            "bytes_down_per_client_round": rows[1]["bytes_to_clients"] / ns.nodes,
            "payload_bytes": rows[1]["shared_payload_bytes"],
        }
        print(case, json.dumps(results[case]), flush=True)
    doc = {
        "command": " ".join(["python -m bench.deploy_overhead", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "nodes": ns.nodes,
        "rounds": ns.rounds,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "target_round_s": TARGET_ROUND_S,
        **results,
    }
    if "fused" in results:
        fused = results["fused"]["median_round_after_first_s"]
        start = results["process_start"]["process_s"]
        doc["targets"] = {
            "round_s": fused,
            "round_met": fused <= TARGET_ROUND_S,
            "round_over_process_start": round(fused / start, 2),
            "within_2x_process_start": fused <= 2 * start,
        }
        if "warm" in results:
            w = results["warm"]["median_round_after_first_s"]
            doc["targets"].update(
                warm_round_s=w, warm_round_met=w <= TARGET_ROUND_S, warm_over_fused=w / fused
            )
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    print(f"wrote {out}")
    return 0


def markdown(doc: dict) -> str:
    """Per-round seconds for every case, then the median time line of a deployment message."""
    out = [
        "| case | round seconds | median later round (s) | download / client / round "
        "(x payload) | load (1 min) |",
        "| --- | --- | --- | --- | --- |",
    ]
    cases = [c for c in ("simulation", "fused", "warm", "separate", "fused-poll1s") if c in doc]
    for case in cases:
        r = doc[case]
        rounds = ", ".join(f"{x:.1f}" for x in r["rounds"])
        ratio = r["bytes_down_per_client_round"] / r["payload_bytes"]
        out.append(
            f"| {case} | {rounds} | {r['median_round_after_first_s']:.1f} | {ratio:.2f}x "
            f"| {r['load1']:.2f} |"
        )
    if "process_start" in doc:
        ps = doc["process_start"]
        out += [
            "",
            f"A fresh ClientApp process (imports, model text side, cached features, no message): "
            f"{ps['process_s']:.1f} s (imports {ps['imports_s']:.1f} s, model and features "
            f"{ps['load_s']:.1f} s).",
        ]
    dep = [c for c in cases if c != "simulation"]
    if dep:
        out += ["", "| part of a message (median, s) | " + " | ".join(dep) + " |"]
        out.append("| --- |" + " --- |" * len(dep))
        for part in PHASES:
            cells = [f"{doc[c]['timeline_train'].get(part, float('nan')):.2f}" for c in dep]
            out.append(f"| {part.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
