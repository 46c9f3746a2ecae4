"""Memory of a simulation's process tree (the launcher, the detached SuperLink under a private
FLWR_HOME, Ray's workers and ClientApp actors), sampled in a thread, and bytes on disk."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pss_rss_mb(pid: int) -> tuple[float, float]:
    """(PSS, RSS) in MB; PSS shares pages fairly between processes, so sums are meaningful."""
    pss = rss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return pss, rss


def _descendants_and(marker: str, root: int) -> list[int]:
    """Our launcher's process tree plus every process naming our private FLWR_HOME (the detached
    SuperLink and its children), plus Ray's workers (their parent chain leads to the SuperLink)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    seeds = {root} | {p for p in parents if marker in _cmdline(p)}
    out = set(seeds)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in out and pid not in out:
                out.add(pid)
                changed = True
    return sorted(out)


@dataclass
class MemorySampler:
    """Samples PSS/RSS of the case's processes every ``every`` seconds in a thread."""

    marker: str
    root: int
    every: float = 0.5
    peak_total_pss: float = 0.0
    peak_client_pss: float = 0.0
    peak_client_rss: float = 0.0
    peak_by_kind: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _kind(self, cmd: str) -> str:
        if "ClientAppActor" in cmd or "ray::" in cmd and "Actor" in cmd:
            return "clientapp-actor"
        for name in ("flower-superlink", "flower-superexec", "flwr-simulation", "raylet",
                     "gcs_server", "launcher.cli", "flwr run", "ray"):  # fmt: skip
            if name in cmd:
                return name
        return "other"

    def run(self) -> None:
        while not self._stop.is_set():
            total = 0.0
            kinds: dict[str, float] = {}
            for pid in _descendants_and(self.marker, self.root):
                pss, rss = _pss_rss_mb(pid)
                total += pss
                kind = self._kind(_cmdline(pid))
                kinds[kind] = kinds.get(kind, 0.0) + pss
                if kind == "clientapp-actor":
                    self.peak_client_pss = max(self.peak_client_pss, pss)
                    self.peak_client_rss = max(self.peak_client_rss, rss)
            self.peak_total_pss = max(self.peak_total_pss, total)
            for k, v in kinds.items():
                self.peak_by_kind[k] = max(self.peak_by_kind.get(k, 0.0), v)
            self.samples += 1
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()


def disk_usage(path: Path) -> int:
    """Bytes of every file below ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
