"""Per-node image folders (deploy_local.py up --split-folders): one dataset partitioned once
with the run config's data.* keys, node i's images linked or copied into its own folder, and the
run config for data.partitioner=local. Imports this repository's data layer (task.data) and
the launcher's run-config TOML writer."""

from __future__ import annotations

import dataclasses
import shutil
import tomllib
from collections.abc import Sequence
from pathlib import Path


def split_folders(
    workdir: Path, num_nodes: int, images: Sequence[Path], run_config: Path, copy: bool = False
) -> tuple[Path, dict[int, Path]]:
    """Give node i the folder ``images[i]``; return the run config for partitioner=local and
    the node index -> data-root mapping.

    Partitions the run config's dataset with its data.* keys (data.num-clients must equal
    ``num_nodes``), writes node i's images (train and test: the node splits them
    itself) to ``images[i]/<class folder>/`` as symlinks or copies, the split's manifest to
    ``<workdir>/split/``, and ``<workdir>/run-config.local.toml``: the same config with
    data.partitioner=local, data.class-names and no data.root.
    """
    from launcher.compose import to_toml
    from task.config import parse_run_config
    from task.data import build_federation, write_manifest

    flat = tomllib.loads(run_config.read_text())
    data = parse_run_config({k: v for k, v in flat.items() if k.startswith("data.")}).data
    if data.partitioner == "local" or data.cross or data.num_clients != num_nodes:
        raise ValueError(
            f"--split-folders partitions one dataset (data.root) over the {num_nodes} "
            f"nodes; {run_config} has data.partitioner={data.partitioner!r}, "
            f"data.cross={data.cross!r}, data.num-clients={data.num_clients}. Fix: use a "
            f"non-local partitioner, no data.cross, and data.num-clients={num_nodes}"
        )
    # Every image of a client goes to its node; the node re-splits (test, val) itself.
    fed = build_federation(dataclasses.replace(data, val_fraction=0.0, holdout="test"))
    write_manifest(fed, workdir / "split")
    roots = {}
    for index, (folder, client) in enumerate(zip(images, fed.clients, strict=True)):
        shutil.rmtree(folder, ignore_errors=True)
        for rec in client.train + client.test:
            dest = folder / rec.image_id.split("/", 1)[1]  # <class folder>/<file>
            dest.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(rec.path, dest)
            else:
                dest.symlink_to(Path(rec.path).resolve())
        roots[index] = folder
    local = {
        **flat,
        "data.partitioner": "local",
        "data.class-names": ",".join(fed.class_names),
        "data.root": "",
    }
    out = workdir / "run-config.local.toml"
    out.write_text(to_toml(local))
    return out, roots
