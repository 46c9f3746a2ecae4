"""The run directory ``runs/<name>/``: config, per-round metrics, global checkpoints, summary.

Everything a run produces, and everything needed to resume it, lives here:

* ``config.json``: the resolved flat run config; ``state.json``: the experiment id (keys the
  clients' private stores) and the config fingerprint a resumed run must match.
* ``metrics.jsonl``: one JSON line per completed round, appended and fsynced.
* ``checkpoints/global-rNNNNN.safetensors``: the global shared prompt after round N (0 = initial).
* ``summary.json`` and ``curves.png`` at the end.

A round counts as completed when both its metrics line and its checkpoint exist; a resumed run
drops anything after the last completed round and continues from there.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from task.config import RESUMABLE_KEYS  # keys a resumed run may change (declared per key)
from task.durable import atomic_write_text, replace_with
from task.hashing import tensor_sha256


class RunDirError(RuntimeError):
    """The run directory cannot be used (e.g. resuming with a different config)."""


def config_fingerprint(flat: Mapping[str, Any], ignore: Iterable[str] = RESUMABLE_KEYS) -> str:
    """sha256 of the config minus the keys a resumed run may change."""
    skip = set(ignore)
    kept = {k: v for k, v in sorted(flat.items()) if k not in skip}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


class RunDir:
    """One run's directory; create with :meth:`open`."""

    def __init__(self, root: Path, experiment_id: str) -> None:
        self.root = root
        self.experiment_id = experiment_id
        # metrics.jsonl as last read or written by this process (the only writer of a run):
        # the round loop asks several times a round, the file is parsed once.
        self._rows: list[dict[str, Any]] | None = None

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(
        cls, base: str | Path, name: str, flat_config: Mapping[str, Any], resume: bool
    ) -> RunDir:
        """Create ``base/name`` or reopen it for resumption (same config fingerprint required)."""
        root = Path(base).expanduser() / name
        state_path = root / "state.json"
        fingerprint = config_fingerprint(flat_config)
        if state_path.is_file():
            if not resume:
                raise RunDirError(
                    f"run directory {root} exists and run.resume=false. Fix: choose another "
                    "run.name, delete the directory, or set run.resume=true to continue it"
                )
            state = json.loads(state_path.read_text())
            if state.get("fingerprint") != fingerprint:
                # The configs decide: a fingerprint written when fewer keys were resumable
                # (e.g. before moving a cache was allowed) must not block a valid resume.
                old = json.loads((root / "config.json").read_text())
                diff = sorted(
                    k
                    for k in set(old) | set(flat_config)
                    if k not in RESUMABLE_KEYS and old.get(k) != flat_config.get(k)
                )
                if diff:
                    raise RunDirError(
                        f"cannot resume run {name!r}: its config differs in {diff}. Fix: use a "
                        "new run.name for a different experiment (only keys such as "
                        "server.num-rounds or where caches live may change)"
                    )
                state["fingerprint"] = fingerprint
                _atomic_write(state_path, json.dumps(state, indent=1))
            run = cls(root, state["experiment_id"])
        else:
            root.mkdir(parents=True, exist_ok=True)
            (root / "checkpoints").mkdir(exist_ok=True)
            experiment_id = f"{name}-{uuid.uuid4().hex[:8]}"
            _atomic_write(
                state_path,
                json.dumps({"experiment_id": experiment_id, "fingerprint": fingerprint}, indent=1),
            )
            run = cls(root, experiment_id)
        _atomic_write(root / "config.json", json.dumps(dict(flat_config), indent=1, default=str))
        return run

    # -- paths ----------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    def checkpoint_path(self, server_round: int) -> Path:
        return self.root / "checkpoints" / f"global-r{server_round:05d}.safetensors"

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, server_round: int, state: Mapping[str, torch.Tensor]) -> Path:
        bad = sorted(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
        if bad:
            raise RunDirError(
                f"refusing to checkpoint round {server_round}: {bad} hold non-finite values "
                "(nothing of the round is saved; the run resumes from the round before)"
            )
        path = self.checkpoint_path(server_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        meta = {"sha256": state_digest(tensors)}
        return replace_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load_checkpoint(self, server_round: int) -> dict[str, torch.Tensor]:
        """The global state after ``server_round``; a file that fails its checksum (or cannot
        be read) raises RunDirError naming it (checkpoints written before checksums load)."""
        path = self.checkpoint_path(server_round)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
        except Exception as err:  # noqa: BLE001 (a truncated file, not a safetensors file)
            raise RunDirError(f"cannot read global checkpoint {path}: {err}") from err
        if "sha256" in meta and meta["sha256"] != state_digest(state):
            raise RunDirError(
                f"global checkpoint {path} fails its checksum (disk corruption or a partial "
                "copy): restore it, or delete it and the later ones to resume from the round "
                "before"
            )
        return state

    def extra_path(self, name: str, server_round: int) -> Path:
        return self.root / "checkpoints" / f"{name}-r{server_round:05d}.safetensors"

    def save_extra(self, name: str, server_round: int, state: Mapping[str, torch.Tensor]) -> Path:
        """Server state beside a round's checkpoint (e.g. pFedMoAP's latest prompt per client),
        written the same atomic way and dropped with the round by truncate_after."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        path = self.extra_path(name, server_round)
        return replace_with(path, lambda tmp: save_file(tensors, str(tmp)))

    def load_extra(self, name: str, server_round: int) -> dict[str, torch.Tensor]:
        path = self.extra_path(name, server_round)
        return load_file(str(path)) if path.is_file() else {}

    # -- metrics ----------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """Complete metric lines, in file order (a torn last line is ignored); a copy."""
        if self._rows is None:
            self._rows = self._parse_metrics()
        return copy.deepcopy(self._rows)

    def _parse_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(_jsonable(record), sort_keys=True)
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._rows is not None:
            self._rows.append(json.loads(line))

    def update_metrics(self, server_round: int, fields: Mapping[str, Any]) -> None:
        """Add fields to an earlier round's line (its fused evaluation arrived a round later);
        per-client values are merged per client. Rewritten atomically."""
        rows = self.read_metrics()
        for row in rows:
            if int(row["round"]) != server_round:
                continue
            for key, value in fields.items():
                if key == "per_client" and isinstance(row.get(key), dict):
                    for pid, values in value.items():
                        row[key].setdefault(pid, {}).update(values)
                else:
                    row[key] = value
        self._write_rows(rows, jsonable=True)

    def _write_rows(self, rows: list[dict[str, Any]], jsonable: bool = False) -> None:
        lines = [json.dumps(_jsonable(m) if jsonable else m, sort_keys=True) for m in rows]
        _atomic_write(self.metrics_path, "".join(line + "\n" for line in lines))
        self._rows = [json.loads(line) for line in lines]

    def last_completed_round(self) -> int | None:
        """Largest r with a metrics line and a checkpoint for every round 1..r; 0 if only the
        initial checkpoint exists; None for a fresh directory."""
        if not self.checkpoint_path(0).is_file():
            return None
        done = 0
        rounds = {int(m["round"]) for m in self.read_metrics()}
        while done + 1 in rounds and self.checkpoint_path(done + 1).is_file():
            done += 1
        return done

    def truncate_after(self, server_round: int) -> None:
        """Drop metric lines and checkpoints of rounds after ``server_round`` (a torn round)."""
        self._write_rows([m for m in self.read_metrics() if int(m["round"]) <= server_round])
        for path in (self.root / "checkpoints").glob("*-r*.safetensors"):
            if int(path.stem.split("-r")[-1]) > server_round:
                path.unlink()

    # -- end of run ---------------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _atomic_write(self.root / "summary.json", json.dumps(_jsonable(summary), indent=1))

    def plot_curves(self) -> Path:
        """curves.png: accuracies (left, with zero-shot dashed) and train loss (right)."""
        path = self.root / "curves.png"
        curves_figure(self.read_metrics(), self.root.name).savefig(path, dpi=110)
        return path


def curves_figure(rows: list[Mapping[str, Any]], title: str) -> Any:
    """The figure of curves.png: personalised and global accuracy per round, the frozen
    model's zero-shot accuracy on the same images as a dashed line, and the train loss."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for key, label in (
        ("personalised_accuracy", "personalised"),
        ("global_accuracy", "global (shared only)"),
    ):
        pts = [(m["round"], m[key]) for m in rows if _finite(m.get(key))]
        if pts:
            ax_acc.plot(*zip(*pts, strict=True), marker="o", label=label)
    zs = next((m["zeroshot_accuracy"] for m in rows if _finite(m.get("zeroshot_accuracy"))), None)
    if zs is not None:  # the frozen model on the same images: what training gained
        ax_acc.axhline(zs, color="gray", linestyle="--", label="zero-shot")
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend(loc="lower right", fontsize=8)
    pts = [(m["round"], m["train_loss"]) for m in rows if _finite(m.get("train_loss"))]
    if pts:
        ax_loss.plot(*zip(*pts, strict=True), marker="o", color="tab:red")
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("train loss")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def summarise(rows: list[Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> dict:
    """Final and best accuracies, totals of bytes and seconds over all rounds."""
    evaluated = [m for m in rows if _finite(m.get("personalised_accuracy"))]
    last = evaluated[-1] if evaluated else {}
    summary: dict[str, Any] = {
        "rounds": len(rows),
        "final_round": rows[-1]["round"] if rows else 0,
        "final_personalised_accuracy": last.get("personalised_accuracy"),
        "final_global_accuracy": last.get("global_accuracy"),
        "best_personalised_accuracy": max(
            (m["personalised_accuracy"] for m in evaluated), default=None
        ),
        "best_global_accuracy": max(
            (m["global_accuracy"] for m in evaluated if _finite(m.get("global_accuracy"))),
            default=None,
        ),
        "final_per_client": last.get("per_client"),
        "zeroshot_accuracy": next(
            (m["zeroshot_accuracy"] for m in rows if _finite(m.get("zeroshot_accuracy"))), None
        ),
        "bytes_up_per_client_round": _per_client_round(rows, "bytes_from_clients"),
        "bytes_down_per_client_round": _per_client_round(rows, "bytes_to_clients"),
        "final_train_loss": rows[-1].get("train_loss") if rows else None,
        "bytes_to_clients": sum(m.get("bytes_to_clients", 0) for m in rows),
        "bytes_from_clients": sum(m.get("bytes_from_clients", 0) for m in rows),
        "clients_failed": sum(m.get("clients_failed", 0) for m in rows),
        "replies_rejected": sum(m.get("replies_rejected", 0) for m in rows),
        "wall_seconds": sum(m.get("round_seconds", 0.0) for m in rows),
    }
    summary.update(extra or {})
    return summary


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None so every line is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys and each tensor's digest."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode() + b"\0" + tensor_sha256(state[key]).encode())
    return h.hexdigest()


def _per_client_round(rows: list[Mapping[str, Any]], key: str) -> float | None:
    """Mean bytes one client sent (or received) in one round, over the rounds run."""
    pairs = [
        (m.get(key, 0), len(m.get("per_client") or {}) or m.get("clients_ok") or 0) for m in rows
    ]
    values = [b / n for b, n in pairs if n]
    return sum(values) / len(values) if values else None


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if _finite(value) else "-"


def _size(n: Any) -> str:
    if not _finite(n):
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def summary_table(summary: Mapping[str, Any], cfg: Any, root: Path, curves: Path) -> str:
    """The short table a run ends with: what it reached against zero-shot on the same test
    images, what it cost, and where everything is."""
    core = cfg.core
    zs, pers, glob = (summary.get(k) for k in (
        "zeroshot_accuracy", "final_personalised_accuracy", "final_global_accuracy"
    ))  # fmt: skip
    gain = f" ({100 * (pers - zs):+.1f} points)" if _finite(pers) and _finite(zs) else ""
    minutes, seconds = divmod(int(round(summary.get("wall_seconds") or 0)), 60)
    rows = [
        ("zero-shot, same test images", _pct(zs)),
        (f"personalised, round {summary.get('final_round')}", _pct(pers) + gain),
        ("global (shared prompt only)", _pct(glob)),
        (
            "sent per client per round",
            f"{_size(summary.get('bytes_up_per_client_round'))} up, "
            f"{_size(summary.get('bytes_down_per_client_round'))} down",
        ),
        ("wall time of the rounds", f"{minutes} min {seconds:02d} s"),
        ("run directory", str(root)),
        ("curves", str(curves)),
    ]
    notes = []
    if _finite(pers) and _finite(glob) and pers < glob:
        notes.append(
            f"the personalised model is {100 * (glob - pers):.1f} points below the global one"
        )
    if _finite(pers) and _finite(zs) and pers < zs:
        notes.append(f"the personalised model is {100 * (zs - pers):.1f} points below zero-shot")
    if notes:
        rows.insert(3, ("note", "; ".join(notes)))
    width = max(len(k) for k, _ in rows)
    head = (
        f"{core.method.name} on {core.data.dataset}, {core.data.num_clients} clients, "
        f"model {Path(core.model.name).name}"
    )
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in rows)])
