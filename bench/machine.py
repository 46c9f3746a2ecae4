"""The machine under the benchmark: the GEMM rate the floor divides by, CPU load from other
processes (a contention indicator, and waiting for an idle CPU), the CPU's name."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def gemm_rate(rows: int, width: int, repeats: int = 10, trials: int = 3) -> float:
    """Best fp32 FLOP/s of a [rows, W] x [W, 4W] matmul (the MLP shape of the text step)."""
    a, b = torch.randn(rows, width), torch.randn(width, 4 * width)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * rows * width * 4 * width / best


def cpu_snapshot() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, this process's CPU seconds, wall seconds)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        busy = float("nan")
    return busy, time.process_time(), time.perf_counter()


def others_load(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Cores that other processes kept busy between two snapshots (contention indicator)."""
    wall = after[2] - before[2]
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / max(wall, 1e-9)


def wait_for_idle(max_wait_s: float, threshold: float = 0.2, window_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold`` cores."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        before = cpu_snapshot()
        time.sleep(window_s)
        load = others_load(before, cpu_snapshot())
        if load < threshold or time.perf_counter() >= deadline:
            return load


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> tuple[float, ...]:
    try:
        return os.getloadavg()
    except OSError:
        return ()
