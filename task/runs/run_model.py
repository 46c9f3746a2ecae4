"""Reading a finished run's model: the final global shared prompt and, for a personalised model,
one client's private prompt (the run-directory contract of fedrsclip-predict / -export, documented
in :func:`load_run_model` and docs/predict.md)."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("fedrsclip.predict")


class RunLoadError(ValueError):
    """A run directory or private store lacks what predict/export needs."""


@dataclass
class RunModel:
    """Everything needed to rebuild one model of a finished run."""

    cfg: Any  # task.config.RunConfig (resolved, from config.json)
    class_names: list[str]
    shared_ctx: torch.Tensor | None  # final global shared prompt S
    private_ctx: torch.Tensor | None  # one client's P, or None for the global model
    info: dict[str, Any] = field(default_factory=dict)  # run, round, client, experiment
    mix: float | None = None  # θ of a mixed personalised head (prompt.personal-head mix/auto)


def load_run_model(
    run_dir: str | os.PathLike[str],
    client: int | None = None,
    private_store: str | os.PathLike[str] | None = None,
    round_: int | None = None,
) -> RunModel:
    """Read a finished run (see the contract below) and, optionally, one client's private prompt.

    Contract (written by the ServerApp via task.runs.run_dir.RunDir and by each ClientApp via
    task.local.private_store.PrivateStore):

    * ``<run>/config.json``: the resolved flat run config (``model.*``, ``prompt.*``,
      ``method.*``, ``loss.*``, ``data.*``, ..., plus ``server.*``, ``run.*``, ``client.*``).
    * ``<run>/state.json``: ``{"experiment_id": ...}``, which keys the clients' private stores.
    * ``<run>/checkpoints/global-rNNNNN.safetensors``: the global shared prompt after round N,
      tensor ``shared_ctx``. The final model is the last *completed* round (metrics line and
      checkpoint, ``RunDir.last_completed_round``), or ``round_`` when given.
    * class names: ``<run>/partition.json`` (``class_names``) when present; otherwise they are
      rebuilt from the config's ``data.*`` keys (needs the data locally).
    * private prompt (``client`` or ``private_store``): ``<base>/<experiment_id>/client-<N>/
      private-rNNNNN.safetensors`` (tensor ``private``, sha256 in metadata); the newest version at
      a round <= the final round is used, as the clients' own evaluation does. ``base`` is the
      run's ``client.private-dir`` unless ``private_store`` is given. ``private_store`` may also
      name a ``client-<N>`` directory itself or one ``private-r*.safetensors`` file.
    """
    from task.config import parse_app_config
    from task.methods import get_method
    from task.model.prompts import SHARED_KEY
    from task.runs.run_dir import RunDir

    root = Path(run_dir)
    config_path, state_path = root / "config.json", root / "state.json"
    for p in (config_path, state_path):
        if not p.is_file():
            raise RunLoadError(
                f"{str(root)!r} is not a finished run directory: {p.name} is missing (a run "
                "directory is runs/<name>/ as written by `flwr run`)"
            )
    app = parse_app_config(json.loads(config_path.read_text()))
    cfg = app.core
    experiment = json.loads(state_path.read_text())["experiment_id"]
    run = RunDir(root, experiment)
    final = run.last_completed_round() if round_ is None else round_
    if final is None or not run.checkpoint_path(final).is_file():
        raise RunLoadError(
            f"run {str(root)!r} has no global checkpoint"
            + ("" if round_ is None else f" for round {round_}")
            + f" ({run.checkpoint_path(final or 0).relative_to(root)} missing)"
        )
    method = get_method(cfg.method.name)
    shared = None
    if method.shared_keys:
        state = run.load_checkpoint(final)
        if SHARED_KEY not in state:
            raise RunLoadError(f"{run.checkpoint_path(final)} has no tensor {SHARED_KEY!r}")
        shared = state[SHARED_KEY].float()
    info: dict[str, Any] = {"run": str(root), "experiment": experiment, "round": final}
    private = None
    if client is not None or private_store is not None:
        if not method.private_keys:
            raise RunLoadError(
                f"method {method.name!r} has no private prompt; leave out --client and "
                "--private-store (its global model is its only model)"
            )
        private, private_info = _load_private(
            client, private_store, app.client.private_dir, experiment, final
        )
        info.update(private_info)
        mix = _personal_mix(method, cfg, Path(private_info["private_store"]), final)
        if mix is not None:
            info["mix_theta"] = mix
        return RunModel(cfg, _class_names(root, cfg), shared, private, info, mix)
    return RunModel(cfg, _class_names(root, cfg), shared, private, info)


def _personal_mix(method: Any, cfg: Any, store: Path, final_round: int) -> float | None:
    """θ of the client's personalised head for the final model: fixed (``mix``), or (``auto``)
    the θ the client chose at that round's evaluation, saved beside its private prompt."""
    from task.local.private_store import PrivateStore, PrivateStoreError

    kind = method.personal_head_for(cfg.prompt)
    if kind == "mix":
        return cfg.prompt.mix_theta
    if kind not in ("auto", "entropy"):
        return None
    client_dir = store if store.is_dir() else store.parent
    ps = PrivateStore(client_dir.parent.parent, client_dir.parent.name, 0)
    ps.dir = client_dir
    try:
        theta = ps.load_mix(final_round)
    except PrivateStoreError as err:
        raise RunLoadError(str(err)) from err
    if theta is None and kind == "entropy":
        theta = _entropy_mix_from_data(cfg, client_dir)
    if theta is None:
        raise RunLoadError(
            f"no personalised-head θ for round {final_round} in {client_dir} "
            f"({ps.mix_path(final_round).name}: the client writes it when it evaluates that "
            "round's model; pass --round with a round it evaluated)"
        )
    return theta


def _entropy_mix_from_data(cfg: Any, client_dir: Path) -> float | None:
    """The entropy head's θ recomputed from the client's training labels, where this machine
    can list the run's data (it is a function of the labels alone); None otherwise."""
    from task.local.evaluate import label_skew_mix

    m = _CLIENT_DIR.match(client_dir.name)
    if m is None or cfg.data.partitioner == "local":
        return None
    try:
        from task.data.federation import build_federation

        fed = build_federation(cfg.data)
        labels = [r.label for r in fed.client(int(m.group(1))).train]
    except Exception as err:  # noqa: BLE001 (no data here: the mix file was the only source)
        log.info("cannot recompute the entropy head's θ from the data (%s)", err)
        return None
    p = cfg.prompt
    return label_skew_mix(labels, len(fed.class_names), p.skew_low, p.skew_high)


def _class_names(root: Path, cfg: Any) -> list[str]:
    manifest = root / "partition.json"
    if manifest.is_file():
        return list(json.loads(manifest.read_text())["class_names"])
    from task.data.federation import build_federation

    log.info("no partition.json in the run; rebuilding class names from data.* settings")
    try:
        return cfg.data.class_name_list() or list(build_federation(cfg.data).class_names)
    except Exception as err:  # any data problem: say what the run lacks
        raise RunLoadError(
            f"the run has no partition.json and its data could not be loaded to recover the "
            f"class names ({err}); copy the run's partition.json into {root}"
        ) from err


_CLIENT_DIR = re.compile(r"^client-(\d+)$")
_PRIVATE_FILE = re.compile(r"^private-r(\d{5,})\.safetensors$")


def _load_private(
    client: int | None,
    store: str | os.PathLike[str] | None,
    private_dir: str,
    experiment: str,
    final_round: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    from task.local.private_store import PrivateStore

    path = Path(store) if store is not None else None
    if path is not None and path.is_file():
        return _load_private_file(path)
    if path is not None and not path.is_dir():
        raise RunLoadError(f"private store {str(path)!r} does not exist")
    m = _CLIENT_DIR.match(path.name) if path is not None else None
    if m:  # a client-<N> directory itself
        if client is not None and client != int(m.group(1)):
            raise RunLoadError(f"--client {client} but --private-store is {path.name}")
        client = int(m.group(1))
        base, exp = path.parent.parent, path.parent.name
        if exp != re.sub(r"[^A-Za-z0-9._-]+", "_", experiment):
            log.warning(
                "private store %s belongs to experiment %r, not this run's %r",
                path,
                exp,
                experiment,
            )
    elif client is None:
        raise RunLoadError(
            f"--private-store {str(path)!r} is neither a private-r*.safetensors file nor a "
            "client-<N> directory; pass the store's base directory with --client N"
        )
    elif path is not None and (path / f"client-{client}").is_dir():  # the experiment directory
        base, exp = path.parent, path.name
    else:  # the base directory (client.private-dir)
        base, exp = (path if path is not None else Path(private_dir)), experiment
    ps = PrivateStore(base, exp, client)
    loaded = ps.load(final_round)
    if loaded is None:
        raise RunLoadError(
            f"no private prompt for client {client} at round <= {final_round} in {ps.dir} "
            "(the client's private store lives on the client's machine: pass it with "
            "--private-store)"
        )
    tensor, r = loaded
    return tensor.float(), {"client": client, "private_round": r, "private_store": str(ps.dir)}


def _load_private_file(path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    from safetensors import safe_open

    from task.hashing import tensor_sha256

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "private" not in f.keys():  # noqa: SIM118 (safe_open API)
            raise RunLoadError(f"{path} holds no tensor 'private'")
        tensor = f.get_tensor("private")
    if "sha256" in meta and meta["sha256"] != tensor_sha256(tensor):
        raise RunLoadError(f"private prompt {path} fails its checksum")
    m = _CLIENT_DIR.match(path.parent.name)
    info: dict[str, Any] = {"private_store": str(path)}
    if m:
        info["client"] = int(m.group(1))
    if _PRIVATE_FILE.match(path.name):
        info["private_round"] = int(_PRIVATE_FILE.match(path.name).group(1))
    return tensor.float(), info
