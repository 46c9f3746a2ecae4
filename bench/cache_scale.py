"""A client's per-message cost of its feature cache at archive scale (issue 27): synthetic
features of CLIP ViT-B/16 size (a 512-d global embedding in fp32 and 196 x 512 patches in fp16,
~200 KB an image) for N images, loaded by a fresh process as a deployed ClientApp does on every
message: the cache key (a stat of every image), the file opened, its checksums checked.

Per N it reports, for the process that finds no verification memo (every tensor hashed, as every
message did before) and for the next processes (the memo holds: nothing hashed; the tensors are
memory-mapped, so untouched bytes are not read): the cache load inside the process, the whole
process's wall time (start, imports, load: the per-message overhead without the work), and its
peak RSS.

    python -m bench.cache_scale                    # N = 1000, 5000, 20000 (~5 GB of disk)
    python -m bench.cache_scale --sizes 1000,5000  # smaller
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import cpu_name, loadavg

RESULTS = Path(__file__).resolve().parent / "results" / "cache_scale.json"
PATCHES, WIDTH = 196, 512

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from types import SimpleNamespace
from task.data.records import ImageRecord
from task.local.features import FeatureCache
root, n = sys.argv[1], int(sys.argv[2])
imports = time.perf_counter() - t0
records = [ImageRecord(f"img{i}", f"{root}/images/img{i}.png", i % 45) for i in range(n)]
backbone = SimpleNamespace(identity="bench", dtype="torch.float16", preprocessing_id="bench")
t1 = time.perf_counter()
cache = FeatureCache(f"{root}/cache")
feats = cache.load_or_extract(backbone, records, with_patches=True, progress=False)
load = time.perf_counter() - t1
status = open("/proc/self/status").read()
hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"load_s": load, "imports_s": imports, "peak_rss_mb": hwm, "n": len(feats)}))
"""


def write_cache(root: Path, n: int) -> float:
    """N empty image files and the cache file their features would make; seconds it took."""
    import torch

    from task.data.records import ImageRecord
    from task.local.features import FeatureCache, FeatureSet

    t0 = time.perf_counter()
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(n):
        path = root / "images" / f"img{i}.png"
        path.touch()
        records.append(ImageRecord(f"img{i}", str(path), i % 45))
    g = torch.Generator().manual_seed(n)
    feats = FeatureSet(
        ids=[r.image_id for r in records],
        labels=torch.tensor([r.label for r in records]),
        global_=torch.randn(n, WIDTH, generator=g),
        patches=torch.randn(n, PATCHES, WIDTH, generator=g).half(),
    )

    class Stub:
        identity, dtype, preprocessing_id = "bench", "torch.float16", "bench"

    cache = FeatureCache(root / "cache")
    cache._save(cache.path(cache.key(Stub(), records)), feats)
    return time.perf_counter() - t0


def probe(root: Path, n: int) -> dict:
    """One fresh process: its wall seconds from start to exit, and what it measured inside."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(root), str(n)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return {
        **json.loads(out.stdout.strip().splitlines()[-1]),
        "process_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--repeats", type=int, default=3, help="processes after the first")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    rows = []
    base = Path(args.dir or tempfile.mkdtemp(prefix="cache-scale-"))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            root = base / f"n{n}"
            shutil.rmtree(root, ignore_errors=True)
            written = write_cache(root, n)
            first = probe(root, n)
            later = [probe(root, n) for _ in range(args.repeats)]
            size = sum(p.stat().st_size for p in (root / "cache").glob("*.safetensors"))
            row = {
                "images": n,
                "cache_mb": size / 1e6,
                "write_s": written,
                "first_load_s": first["load_s"],
                "later_load_s": min(p["load_s"] for p in later),
                "first_process_s": first["process_s"],
                "later_process_s": min(p["process_s"] for p in later),
                "first_peak_rss_mb": first["peak_rss_mb"],
                "later_peak_rss_mb": max(p["peak_rss_mb"] for p in later),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    small, large = rows[0], rows[-1]
    ratio = large["later_process_s"] / small["later_process_s"]
    result = {
        "machine": {"cpu": cpu_name(), "loadavg": loadavg()},
        "rows": rows,
        "later_process_ratio_largest_to_smallest": ratio,
        "command": "python -m bench.cache_scale --sizes " + args.sizes,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"per-message process, {large['images']} vs {small['images']} images: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
