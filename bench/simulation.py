"""Whole-simulation benchmark: real `flwr run` simulations (Ray) of Fed-UCMerced with the stand-in,
timed end to end and split into setup, image-feature extraction, local training, evaluation and
Flower overhead; peak memory per ClientApp process and of the whole simulation; bytes per client
per round; the feature cache's size on disk; and how the cost grows with clients and classes.

    python -m bench.simulation                       # the 40 clients x 50 rounds case (~10 min)
    python -m bench.simulation --suite scaling       # clients 10/20/40/100, classes 21/30/45
    python -m bench.simulation --suite actors        # 1 vs 2 Ray actors, side by side
    python -m bench.simulation --suite all           # everything (~35 min on 2 cores)

Each case is one `python -m launcher ...` call (the user's command) against a SuperLink
private to the case (own FLWR_HOME and ports), stopped afterwards. Split of a run (all from the
run's own metrics.jsonl, where every client reply carries ``time-total`` / ``time-features``):

* setup = launcher wall time - sum of round times (SuperLink, Ray, actors, imports, preflight);
* client work (CPU-seconds in the ClientApp handlers) = features + train + evaluate;
* overhead = sum of round times - client work / actors: Flower messaging, Ray scheduling, the
  server's aggregation and checkpoints, and any time the actors wait on each other or the CPU.

Results go to ``bench/results/simulation.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.memory import MemorySampler, disk_usage

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
UCM = SHARED / "data" / "ucmerced"
AID = SHARED / "data" / "aid"
STANDIN = SHARED / "models" / "rs-lit-b0-minilm"  # conf/config.yaml's model.name


# -- one case --------------------------------------------------------------------------------
@dataclass
class Case:
    """One simulation: launcher overrides, e.g. federation=ucmerced_40 rounds=50."""

    name: str
    overrides: list[str]
    client_cpus: float = 1.0

    def actors(self) -> int:
        return max(1, int((os.cpu_count() or 1) // self.client_cpus))


def run_case(case: Case, work: Path, cache_dir: Path, timeout: float) -> dict[str, Any]:
    """Run one case through the launcher; return its timings, memory and bytes."""
    # A private FLWR_HOME and ports, and stopping what runs under it (as the e2e tests do).
    from testkit.flwr_run import pids_using, private_flwr_env, stop_processes

    home = work / case.name / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    runs = work / case.name / "runs"
    env = private_flwr_env(home)
    cmd = [
        sys.executable, "-m", "launcher", *case.overrides,
        f"run_config.run.dir={runs}",
        f"run_config.cache.dir={cache_dir}",
        f"run_config.client.private-dir={work / case.name / 'private'}",
        f"launch.client_cpus={case.client_cpus:g}",
        f"hydra.run.dir={work / case.name / 'hydra'}",
    ]  # fmt: skip
    print(f"[{case.name}] {' '.join(cmd[2:])}", flush=True)
    log_path = work / case.name / "launch.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = MemorySampler(marker=str(home), root=proc.pid)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -9
        finally:
            sampler.stop()
            thread.join()
            stop_processes(pids_using(str(home)))
    wall = time.perf_counter() - t0
    metrics_files = sorted(runs.glob("*/metrics.jsonl"))
    if rc != 0 or not metrics_files:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"case {case.name} failed (exit {rc}); log {log_path}:\n{tail}")
    rows = [json.loads(line) for line in metrics_files[0].read_text().splitlines()]
    out = summarise_rows(rows, wall, case.actors())
    config = json.loads((metrics_files[0].parent / "config.json").read_text())
    out.update(
        case=case.name,
        model=Path(config["model.name"]).name,
        overrides=case.overrides,
        client_cpus=case.client_cpus,
        actors=case.actors(),
        exit_code=rc,
        memory_mb={
            "peak_clientapp_actor_pss": round(sampler.peak_client_pss, 1),
            "peak_clientapp_actor_rss": round(sampler.peak_client_rss, 1),
            "peak_simulation_pss": round(sampler.peak_total_pss, 1),
            "peak_by_process_kind_pss": {k: round(v, 1) for k, v in sampler.peak_by_kind.items()},
            "samples": sampler.samples,
        },
        feature_cache_bytes=disk_usage(cache_dir),
        private_dir_bytes=disk_usage(work / case.name / "private"),
        run_dir_bytes=disk_usage(metrics_files[0].parent),
    )
    return out


def summarise_rows(rows: list[dict[str, Any]], wall: float, actors: int) -> dict[str, Any]:
    """Split a run's wall time using the per-client ``*_s`` timings in its metrics rows."""
    rounds = [r["round_seconds"] for r in rows]
    per_round: list[dict[str, float]] = []
    for r in rows:
        t = {"features": 0.0, "train": 0.0, "evaluate": 0.0, "clients": 0, "cpu": 0.0}
        for c in r.get("per_client", {}).values():
            t["cpu"] += c.get("train_cpu_s", 0.0) + c.get("eval_cpu_s", 0.0)
            t["features"] += c.get("train_features_s", 0.0) + c.get("eval_features_s", 0.0)
            t["train"] += c.get("train_compute_s", 0.0)
            t["evaluate"] += c.get("eval_compute_s", 0.0)
            t["clients"] += 1
        per_round.append(t)
    work = {k: sum(t[k] for t in per_round) for k in ("features", "train", "evaluate")}
    client_work = sum(work.values())
    overhead = sum(rounds) - client_work / actors
    steady = rounds[1:] or rounds
    first = rows[0]
    clients = max(1, len(first.get("per_client", {})))
    payload = int(first.get("shared_payload_bytes", 0))
    down = first.get("bytes_to_clients", 0) / clients
    up = first.get("bytes_from_clients", 0) / clients
    return {
        "rounds": len(rows),
        "clients": clients,
        "wall_s": round(wall, 1),
        "setup_s": round(wall - sum(rounds), 1),
        "rounds_s": round(sum(rounds), 1),
        "round1_s": round(rounds[0], 2),
        "round_median_after_first_s": round(statistics.median(steady), 2),
        "client_cpu_s": {k: round(v, 1) for k, v in work.items()},
        "client_cpu_round1_features_s": round(per_round[0]["features"], 1),
        # process CPU seconds in the handlers (robust to other jobs, unlike wall time)
        "client_process_cpu_s": round(sum(t["cpu"] for t in per_round), 1),
        "client_process_cpu_round1_s": round(per_round[0]["cpu"], 1),
        "client_process_cpu_median_later_round_s": round(
            statistics.median([t["cpu"] for t in per_round[1:]] or [per_round[0]["cpu"]]), 2
        ),
        "overhead_s": round(overhead, 1),
        "overhead_share_of_rounds": round(overhead / sum(rounds), 3) if sum(rounds) else None,
        "final_personalised_accuracy": rows[-1].get("personalised_accuracy"),
        "final_global_accuracy": rows[-1].get("global_accuracy"),
        "bytes_per_client_round1": {
            "payload": payload,
            "down_total": round(down, 1),
            "up_total": round(up, 1),
        },
    }


# -- synthetic class-scaling data -------------------------------------------------------------
def class_folder(root: Path, classes: int, total: int = 2100, size: int = 128) -> Path:
    """``classes`` synthetic classes with ``total`` images in all (same image count for every C,
    so the cost difference is the text side): coloured noise, written once and reused."""
    import numpy as np
    from PIL import Image

    out = root / f"synthetic-{classes}c-{total}"
    done = out / ".complete"
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(classes)
    per = total // classes
    for c in range(classes):
        d = out / f"class{c:02d}"
        d.mkdir(parents=True)
        base = rng.integers(0, 256, size=3)
        for i in range(per):
            px = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(d / f"{i:03d}.jpg", quality=90)
    done.write_text("ok\n")
    return out


# -- suites ----------------------------------------------------------------------------------
def suite(name: str, ns: argparse.Namespace, data_dir: Path) -> list[Case]:
    base = [f"method={ns.method}", f"recipe={ns.recipe}", "seed=0"]
    if name == "main":
        over = [f"federation=ucmerced_{ns.clients}", f"rounds={ns.rounds}", *base]
        return [Case(f"ucm-{ns.clients}c-{ns.rounds}r-{ns.recipe}", over)]
    if name == "actors":
        over = [f"federation=ucmerced_{ns.clients}", f"rounds={ns.scaling_rounds}", *base]
        return [Case(f"actors1-{ns.clients}c", over, client_cpus=float(os.cpu_count() or 2)),
                Case(f"actors2-{ns.clients}c", over, client_cpus=1.0)]  # fmt: skip
    if name == "scaling":
        r = f"rounds={ns.scaling_rounds}"
        cases = []
        for k in (10, 20, 100):  # 40: the actors suite's actors2 case (same settings)
            over = [f"federation=ucmerced_{k}", r, *base]
            if k == 100:  # no preset: the 40-client one with 100 clients
                over = ["federation=ucmerced_40", "run_config.data.num-clients=100", r, *base]
            cases.append(Case(f"clients-{k}", over))
        for c in (21, 30, 45):
            folder = class_folder(data_dir, c)
            over = ["federation=ucmerced_10", "run_config.data.dataset=imagefolder",
                    f"run_config.data.root={folder}", r, *base]  # fmt: skip
            cases.append(Case(f"classes-{c}", over))
        return cases
    raise SystemExit(f"unknown suite {name!r}")


def markdown(results: list[dict[str, Any]]) -> str:
    """One line per case: wall time and its split, memory, cache size, accuracy."""
    head = (
        "| case | model | clients x rounds | actors | wall (s) | setup (s) | round 1 (s) "
        "| later round, median (s) | later round, client process CPU (s) "
        "| features / train / eval (client wall-s) "
        "| overhead (s, share) | peak PSS: ClientApp / all (MB) | cache (MB) | final pers. acc |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        cpu = r["client_cpu_s"]
        mem = r["memory_mb"]
        acc = r["final_personalised_accuracy"]
        lines.append(
            f"| {r['case']} | {r.get('model', 'rs-tinyclip-aid')} | {r['clients']} x {r['rounds']} "
            f"| {r['actors']} | {r['wall_s']} | "
            f"{r['setup_s']} | {r['round1_s']} | {r['round_median_after_first_s']} | "
            f"{r.get('client_process_cpu_median_later_round_s', '-')} | "
            f"{cpu['features']} / {cpu['train']} / {cpu['evaluate']} | {r['overhead_s']} "
            f"({100 * (r['overhead_share_of_rounds'] or 0):.0f}%) | "
            f"{mem['peak_clientapp_actor_pss']:.0f} / {mem['peak_simulation_pss']:.0f} | "
            f"{r['feature_cache_bytes'] / 1e6:.1f} | "
            f"{'-' if acc is None else f'{100 * acc:.2f}%'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="main", help="main | scaling | actors | all")
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--scaling-rounds", type=int, default=4)
    ap.add_argument("--method", default="fedrsclip")
    ap.add_argument("--recipe", default="standin", help="conf/recipe preset (standin | default)")
    ap.add_argument("--workdir", help="default: a temporary directory, removed afterwards")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "simulation.json"))
    ap.add_argument("--timeout", type=float, default=3600)
    ns = ap.parse_args(argv)
    if not (UCM.is_dir() and STANDIN.is_dir()):
        print(f"skip: needs {UCM} and {STANDIN} (../shared beside the checkout)")
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="fedrsclip-simbench-") if not ns.workdir else None
    work = Path(ns.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    names = ["actors", "scaling", "main"] if ns.suite == "all" else [ns.suite]
    if ns.suite == "all":
        ns.clients = 40  # actors2-40c is also the 40-client point of the scaling series
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    try:
        for name in names:
            for case in suite(name, ns, work / "data"):
                # Its own feature cache: every case pays its extraction in round 1, so round 1
                # and the wall time compare alike; later rounds are the steady state.
                res = run_case(case, work, work / case.name / "features", ns.timeout)
                res["suite"] = name
                results.append(res)
                brief = ("case", "wall_s", "setup_s", "rounds_s", "round_median_after_first_s")
                print(json.dumps({k: res[k] for k in brief}), flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    doc = {
        "command": " ".join(["python -m bench.simulation", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load0],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    out = Path(ns.out)
    if out.exists() and ns.suite != "all":  # keep the other cases' results
        old = json.loads(out.read_text())
        names = {r["case"] for r in results}
        kept = [r for r in old.get("results", []) if r.get("case") not in names]
        doc["results"] = kept + results
        doc.setdefault("runs", old.get("runs", []))
    doc.setdefault("runs", [])
    doc["runs"].append({"command": doc["command"], "date": doc["date"], "machine": doc["machine"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
