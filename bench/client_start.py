"""What a fresh ClientApp process costs to start: lean vs eager model load, before vs after.

In the Deployment Engine every message starts a new ClientApp process, so its start-up is paid
per message. ``load_backbone(cfg)`` (lean, the default) reads only the text side of a local
safetensors model and builds the vision tower on first use, so a client with cached features
never builds it nor imports timm; ``load_backbone(cfg, lazy_vision=False)`` (eager) loads the
whole model, as every start did before the lean start. Per model, in fresh processes side by
side (lean and eager alternating, one warm-up each, median of ``--repeats``): the seconds of
``import client_app.app``, of the load, of the load plus the first text forward (zero-shot
features: every text weight read, also where the eager load left the file memory-mapped), the
process's peak RSS and whether timm got imported.
Then ``python -c "import client_app.app"`` in a worktree of ``--before`` (default c4195f2, the
commit before the lean start) vs this tree, the heavy modules each leaves loaded, and the top
modules of ``python -X importtime`` here::

    python -m bench.client_start            # -> bench/results/client_start.json, a table

Models (each skipped with a reason when absent): ``tiny`` (testkit's random tiny CLIP),
``tinyclip`` and ``stand-in`` from ../shared/models, and ``vit-b16``, a random CLIP of
ViT-B/16's shapes (bench.local_step.vitb16_backbone) saved once into ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench.machine import cpu_name, loadavg
from bench.step import SHARED

REPO = Path(__file__).resolve().parents[1]
TINYCLIP = SHARED / "models" / "rs-tinyclip-aid"
STAND_IN = SHARED / "models" / "rs-lit-b0-minilm"
MODELS = ("tiny", "tinyclip", "stand-in", "vit-b16")
BEFORE_REF = "c4195f2"
HEAVY = ("timm", "ot", "matplotlib", "datasets", "flwr_datasets", "torchvision", "PIL",
         "sklearn", "scipy", "pandas")  # fmt: skip

# One fresh process: import the ClientApp, then load the backbone lean or eager. Peak RSS is
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over a fork + exec, so a child of a
# parent that built the 600 MB ViT-B/16 would report the parent's peak.
LOAD_CODE = textwrap.dedent(
    """
    def peak_rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import json, sys, time
    t0 = time.perf_counter()
    import client_app.app
    t1 = time.perf_counter()
    rss_imports = peak_rss_mb()
    from task.model.backbone import load_backbone
    from task.config import ModelConfig
    t2 = time.perf_counter()
    backbone = load_backbone(ModelConfig(name=sys.argv[1], device="cpu"),
                             lazy_vision=sys.argv[2] == "lean")
    t3 = time.perf_counter()
    from task.model.zeroshot import zeroshot_features
    from testkit.images import TINY_CLASSES
    zeroshot_features(backbone, TINY_CLASSES)  # reads every text weight (mmapped pages too)
    t4 = time.perf_counter()
    print(json.dumps({"imports_s": t1 - t0, "load_s": t3 - t2, "first_text_s": t4 - t3,
                      "load_text_s": t4 - t2,
                      "rss_mb": peak_rss_mb(), "rss_imports_mb": rss_imports,
                      "timm": "timm" in sys.modules, "vision_built": backbone.vision_loaded,
                      "client_app": client_app.app.__file__}))
    """
)
# One fresh process: only the import, then which heavy modules it left loaded.
IMPORT_CODE = textwrap.dedent(
    f"""
    import json, sys, time
    t0 = time.perf_counter()
    import client_app.app
    t1 = time.perf_counter()
    print(json.dumps({{"import_s": t1 - t0, "client_app": client_app.app.__file__,
                      "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """
)


def _env(tree: Path) -> dict[str, str]:
    """The environment of a child: ``tree`` first on the path (the editable install points at
    another checkout), offline hub."""
    return {
        **os.environ,
        "PYTHONPATH": str(tree),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def _child(tree: Path, args: list[str]) -> tuple[float, dict[str, Any]]:
    """Run ``python args`` in a fresh process at ``tree``: (wall seconds, its JSON last line)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, *args],
        cwd=tree,
        env=_env(tree),
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(got["client_app"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the child at {tree} imported {got['client_app']}")
    return wall, got


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def model_start(model_dir: Path, repeats: int, warmups: int = 1) -> dict[str, Any]:
    """Lean vs eager in alternating fresh processes (the first ``warmups`` pairs fill the disk
    cache); medians, and what the runs saw (timm imported, vision tower built)."""
    runs: dict[str, list[dict[str, Any]]] = {"lean": [], "eager": []}
    for i in range(warmups + repeats):
        order = ("lean", "eager") if i % 2 == 0 else ("eager", "lean")
        for mode in order:
            wall, got = _child(REPO, ["-c", LOAD_CODE, str(model_dir), mode])
            if i >= warmups:
                runs[mode].append({**got, "process_s": wall})
    row: dict[str, Any] = {"dir": str(model_dir)}
    for mode, rs in runs.items():
        row[mode] = {
            "imports_s": _median(rs, "imports_s"), "load_s": _median(rs, "load_s"),
            "first_text_s": _median(rs, "first_text_s"),
            "load_text_s": _median(rs, "load_text_s"),
            "process_s": _median(rs, "process_s"), "rss_mb": round(max(r["rss_mb"] for r in rs)),
            "rss_imports_mb": round(max(r["rss_imports_mb"] for r in rs)),
            "timm": any(r["timm"] for r in rs), "vision_built": any(r["vision_built"] for r in rs),
            "all_load_s": [round(r["load_s"], 3) for r in rs],
        }  # fmt: skip
    row["imports_s"] = _median(runs["lean"] + runs["eager"], "imports_s")
    row["eager_over_lean"] = round(row["eager"]["load_s"] / max(row["lean"]["load_s"], 1e-9), 2)
    row["eager_over_lean_with_text"] = round(
        row["eager"]["load_text_s"] / max(row["lean"]["load_text_s"], 1e-9), 2
    )
    return row


def vitb16_dir(cache: Path) -> Path:
    """A random ViT-B/16-shaped CLIP saved like a hub model (~600 MB), built once and reused."""
    path = cache / "vit-b16-random"
    if (path / "model.safetensors").is_file() and (path / "preprocessor_config.json").is_file():
        return path
    from bench.local_step import vitb16_backbone

    backbone = vitb16_backbone(TINYCLIP if TINYCLIP.is_dir() else None)
    backbone.model.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    backbone.image_processor.save_pretrained(path)
    return path


def model_dirs(names: list[str], work: Path, cache: Path) -> tuple[dict[str, Path], list[str]]:
    """The directory of each requested model, and a note for each one skipped."""
    dirs: dict[str, Path] = {}
    notes: list[str] = []
    for name in names:
        if name == "tiny":
            from testkit.models import save_tiny_clip

            dirs[name] = save_tiny_clip(work / "tiny-clip")
        elif name == "vit-b16":
            dirs[name] = vitb16_dir(cache)
            if not TINYCLIP.is_dir():
                notes.append("vit-b16: no CLIP BPE tokenizer in ../shared, tiny tokenizer used")
        else:
            path = TINYCLIP if name == "tinyclip" else STAND_IN
            if path.is_dir():
                dirs[name] = path
            else:
                notes.append(f"skipped {name}: {path} is absent")
                print(notes[-1], flush=True)
    return dirs, notes


def import_times(
    trees: dict[str, Path], repeats: int, warmups: int = 1
) -> dict[str, dict[str, Any]]:
    """``python -c "import client_app.app"`` in each tree, alternating, after ``warmups`` each:
    median process and in-process import seconds, and the heavy modules left loaded."""
    runs: dict[str, list[dict[str, Any]]] = {tag: [] for tag in trees}
    for i in range(warmups + repeats):
        for tag in trees if i % 2 == 0 else reversed(list(trees)):
            wall, got = _child(trees[tag], ["-c", IMPORT_CODE])
            if i >= warmups:
                runs[tag].append({**got, "process_s": wall})
    return {
        tag: {"process_s": _median(rs, "process_s"), "import_s": _median(rs, "import_s"),
              "heavy": rs[-1]["heavy"], "client_app": rs[-1]["client_app"]}
        for tag, rs in runs.items()
    }  # fmt: skip


def importtime_top(tree: Path, n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` modules with the largest cumulative import time (``python -X importtime``)."""
    cmd = [sys.executable, "-X", "importtime", "-c", "import client_app.app"]
    out = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True, check=True)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        rows.append(
            {
                "module": name.strip(),
                "cumulative_s": int(cumulative) / 1e6,
                "depth": (len(name) - len(name.lstrip()) - 1) // 2,
            }
        )
    return sorted(rows, key=lambda r: -r["cumulative_s"])[:n]


def before_vs_after(ref: str, repeats: int, warmups: int = 1) -> dict[str, Any]:
    """Import cost of the ClientApp at ``ref`` vs this tree, in a temporary git worktree that is
    removed again whatever happens."""
    with tempfile.TemporaryDirectory(prefix="client-start-before-") as tmp:
        before = Path(tmp) / "tree"
        try:
            _git("worktree", "add", "--detach", str(before), ref)
            rev = _git("rev-parse", "--short", "HEAD", cwd=before)
            times = import_times({"before": before, "after": REPO}, repeats, warmups)
        finally:
            _git("worktree", "remove", "--force", str(before), check=False)
            _git("worktree", "prune", check=False)
    return {"ref": ref, "commit": rev, **times}


def _git(*args: str, cwd: Path = REPO, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=check, capture_output=True, text=True)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m bench.client_start", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "client_start.json"))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--repeats", type=int, default=3, help="timed processes each")
    p.add_argument("--warmups", type=int, default=1, help="untimed processes each, first")
    p.add_argument("--before", default=BEFORE_REF, help="git ref of the 'before' imports")
    p.add_argument("--no-before", action="store_true", help="skip the before-vs-after imports")
    p.add_argument(
        "--cache",
        default="/tmp/fedrsclip-bench-client-start",
        help="where the random ViT-B/16 model is saved once",
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    load_before = list(loadavg())
    with tempfile.TemporaryDirectory(prefix="client-start-") as work:
        dirs, notes = model_dirs(args.models, Path(work), Path(args.cache))
        rows = []
        for name, path in dirs.items():
            rows.append({"model": name, **model_start(path, args.repeats, args.warmups)})
            print(json.dumps(rows[-1]), flush=True)
    imports: dict[str, Any] = {}
    if not args.no_before:
        imports = before_vs_after(args.before, args.repeats, args.warmups)
        print(json.dumps(imports), flush=True)
    imports["importtime_top"] = importtime_top(REPO)
    doc = {
        "command": " ".join(
            ["python -m bench.client_start", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1_5_15_before": load_before,
            "load_average_1_5_15_after": list(loadavg()),
        },
        "repeats": args.repeats,
        "warmups": args.warmups,
        "notes": notes,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
        "imports": imports,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    print(f"wrote {out}")
    return doc


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def markdown(doc: dict[str, Any]) -> str:
    """Per model: imports, lean vs eager load, peak RSS, timm; then imports before vs after."""
    out = [
        "| model | import client_app.app (s) | lean load (s) | eager load (s) | eager / lean | "
        "load + first text forward, lean / eager (s) | eager / lean | "
        "peak RSS imports / lean / eager (MB) | timm imported lean / eager |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        lean, eager = r["lean"], r["eager"]
        out.append(
            f"| {r['model']} | {r['imports_s']:.2f} | {lean['load_s']:.2f} | "
            f"{eager['load_s']:.2f} | {r['eager_over_lean']:.1f}x | "
            f"{lean['load_text_s']:.2f} / {eager['load_text_s']:.2f} | "
            f"{r['eager_over_lean_with_text']:.1f}x | "
            f"{lean['rss_imports_mb']:.0f} / {lean['rss_mb']:.0f} / {eager['rss_mb']:.0f} | "
            f"{_yes(lean['timm'])} / {_yes(eager['timm'])} |"
        )
    imports = doc["imports"]
    if "before" in imports:
        out += [
            "",
            '| tree | `python -c "import client_app.app"` (s) | the import alone (s) | '
            "heavy modules loaded |",
            "| --- | --- | --- | --- |",
        ]
        for tag in ("before", "after"):
            t = imports[tag]
            commit = imports["commit"] if tag == "before" else doc["commit"]
            heavy = ", ".join(t["heavy"]) or "none"
            out.append(
                f"| {tag} ({commit}) | {t['process_s']:.2f} | {t['import_s']:.2f} | {heavy} |"
            )
    top = imports.get("importtime_top", [])
    if top:
        cells = ", ".join(f"{r['module']} {r['cumulative_s']:.2f}" for r in top)
        out += ["", f"Largest cumulative imports now (`python -X importtime`, s): {cells}."]
    load = doc["machine"]["load_average_1_5_15_before"]
    if load:
        out += [
            "",
            f"Load average (1 min) when it started: {load[0]:.2f} "
            f"on {doc['machine']['cores']} cores.",
        ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
