#!/usr/bin/env python
"""Run FedRSCLIP on Flower's Deployment Engine on this machine: a SuperLink and N SuperNodes.

Every component is a separate OS process on 127.0.0.1, exactly as on real machines:

* ``flower-superlink`` with TLS (a throwaway CA and server certificate made here) and SuperNode
  authentication (one ECDSA key per node, registered with ``flwr supernode register``);
* ``flower-supernode`` i (i = 0..N-1) with its own partition, its own private-prompt and
  feature-cache directories (node config) and its own working directory ``nodes/node-i/``;
* ``flwr run <app> <connection> --stream`` against them (connection in a private FLWR_HOME).

With ``--split-folders`` each node gets its own image folder, as at a real institution: the run
config's dataset is partitioned once here (its ``data.*`` keys), node i's images are linked (or
copied, ``--copy-images``) into ``nodes/node-i/images/<class>/``, each SuperNode is started with
node config ``data-root=<that folder>`` and the run with ``data.partitioner=local``,
``data.class-names=...`` and no ``data.root`` (``run-config.local.toml``), so neither the server
nor any other node can list a node's images.

Layout of ``--workdir``::

    certs/ca.crt ca.key server.crt server.key   keys/node-i(.pub)   flwr-home/config.toml
    superlink/   (SuperLink cwd: state.db, runs/ when run.dir is relative)
    nodes/node-i/private/   nodes/node-i/.cache/features/   logs/*.log
    nodes/node-i/images/    split/partition.json   run-config.local.toml   (--split-folders)

Examples::

    python scripts/deploy_local.py up --nodes 3 --workdir /tmp/fedrsclip-deploy \\
        --run-config my-run.toml               # start, run, stop
    python scripts/deploy_local.py up --nodes 3 --workdir DIR --keep   # leave it running
    python scripts/deploy_local.py up --nodes 3 --workdir DIR --run-config my-run.toml \\
        --split-folders                        # one image folder per node (partitioner=local)
    python scripts/deploy_local.py certs --out docker/certs --san superlink   # CA + server cert
    python scripts/deploy_local.py keygen --out keys/node-0   # a SuperNode key pair

Only the standard library, ``cryptography`` (a Flower dependency) and the Flower CLIs are used;
``--split-folders`` also imports this repository's data layer (``task.data``) to partition.
Beside this file: deploy_certs.py (CA, server certificate, node keys), deploy_procs.py (ports,
process groups), deploy_split.py (per-node image folders).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Its sibling modules, also when this file is loaded by path (tests) rather than run.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_certs import make_certs, make_node_key  # noqa: E402
from deploy_procs import (  # noqa: E402, F401
    free_port,
    group_alive,
    stop_group,
    stop_warm_worker,
    wait_for_port,
)
from deploy_split import split_folders  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONNECTION = "deploy-local"


@dataclass
class Node:
    index: int
    dir: Path
    port: int
    key: Path | None
    proc: subprocess.Popen | None = None

    @property
    def private_dir(self) -> Path:
        return self.dir / "private"

    @property
    def cache_dir(self) -> Path:
        # Where the run config's default relative cache.dir (".cache/features") lands for a
        # ClientApp started from this node's working directory; also passed as node config.
        return self.dir / ".cache" / "features"

    @property
    def images(self) -> Path:
        """The node's own image folder (--split-folders): its node-config data-root."""
        return self.dir / "images"

    @property
    def log(self) -> Path:
        return self.dir.parent.parent / "logs" / f"supernode-{self.index}.log"


@dataclass
class LocalDeployment:
    """A SuperLink and N SuperNodes on loopback; use as a context manager (stops everything)."""

    workdir: Path
    num_nodes: int
    tls: bool = True
    auth: bool = True
    node_extra: dict[str, str] = field(default_factory=dict)  # more node-config keys for all
    data_roots: dict[int, Path] = field(default_factory=dict)  # node index -> data-root
    env_extra: dict[str, str] = field(default_factory=dict)
    warm_worker: str = "auto"  # client.warm-worker of every node (client_app.entry)
    superlink_port: int = 0
    nodes: list[Node] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    certs: dict[str, Path] = field(default_factory=dict)

    # -- paths / env --------------------------------------------------------------------------
    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr-home"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.superlink_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(self.flwr_home),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
        env.update(self.env_extra)
        return env

    def _spawn(self, argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"$ (cd {cwd} && {shlex.join(argv)})\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        self.procs.append(proc)
        return proc

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every process this deployment started (SuperNodes first), by process group."""
        for proc in reversed(self.procs):
            stop_group(proc)
        for node in self.nodes:
            stop_warm_worker(node.private_dir)

    def prepare(self) -> None:
        """Certificates, node keys, directories and the flwr connection (config.toml)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.flwr_home.mkdir(exist_ok=True)
        (self.workdir / "superlink").mkdir(exist_ok=True)
        if not self.superlink_port:
            self.superlink_port = free_port()
        if self.tls:
            self.certs = make_certs(self.workdir / "certs")
        for i in range(self.num_nodes):
            key = make_node_key(self.workdir / "keys" / f"node-{i}")[0] if self.auth else None
            node = Node(i, self.workdir / "nodes" / f"node-{i}", free_port(), key)
            node.private_dir.mkdir(parents=True, exist_ok=True)
            node.cache_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(node)
        conn = [f'address = "{self.address}"']
        if self.tls:
            conn.append(f'root-certificates = "{self.certs["ca"]}"')
        else:
            conn.append("insecure = true")
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            + "\n".join(conn)
            + "\n"
        )

    def start_superlink(self, timeout: float = 60) -> subprocess.Popen:
        argv = [
            "flower-superlink",
            "--host", "127.0.0.1",
            "--port", str(self.superlink_port),
            "--database", str(self.workdir / "superlink" / "state.db"),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        if self.tls:
            argv += [
                "--ssl-ca-certfile", str(self.certs["ca"]),
                "--ssl-certfile", str(self.certs["cert"]),
                "--ssl-keyfile", str(self.certs["key"]),
            ]  # fmt: skip
        else:
            argv.append("--insecure")
        if self.auth:
            argv.append("--enable-supernode-auth")
        proc = self._spawn(argv, self.workdir / "superlink", self.logs / "superlink.log")
        wait_for_port(self.superlink_port, timeout, proc)
        return proc

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A ``flwr`` CLI call with this deployment's FLWR_HOME (own session, bounded)."""
        proc = subprocess.Popen(
            ["flwr", *args],
            cwd=REPO,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc, grace=5)
            out, _ = proc.communicate()
            raise TimeoutError(f"flwr {shlex.join(args)} ran over {timeout}s:\n{out}") from None
        finally:
            stop_group(proc, grace=2)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")

    def register(self, pub: Path, timeout: float = 60) -> str:
        res = self.flwr("supernode", "register", str(pub), CONNECTION, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"flwr supernode register {pub} failed:\n{res.stdout}")
        return res.stdout

    def node_config(self, node: Node) -> str:
        cfg = {
            "partition-id": str(node.index),
            "num-partitions": str(self.num_nodes),
            "private-dir": json.dumps(str(node.private_dir)),
            "cache-dir": json.dumps(str(node.cache_dir)),
            "warm-worker": json.dumps(self.warm_worker),
        }
        if node.index in self.data_roots:
            cfg["data-root"] = json.dumps(str(self.data_roots[node.index]))
        cfg.update(self.node_extra)
        return " ".join(f"{k}={v}" for k, v in cfg.items())

    def supernode_argv(self, node: Node, key: Path | None = None, **extra: str) -> list[str]:
        argv = [
            "flower-supernode",
            "--superlink", self.address,
            "--port", str(node.port),
            "--node-config", self.node_config(node),
        ]  # fmt: skip
        argv += ["--root-certificates", str(self.certs["ca"])] if self.tls else ["--insecure"]
        key = key or node.key
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key)]
        for k, v in extra.items():
            argv += [f"--{k.replace('_', '-')}", v]
        return argv

    def start_supernodes(self) -> None:
        for node in self.nodes:
            if node.key is not None:
                self.register(node.key.with_name(node.key.name + ".pub"))
            node.proc = self._spawn(self.supernode_argv(node), node.dir, node.log)

    def split_folders(self, run_config: Path, copy: bool = False) -> Path:
        """Give every node its own image folder (``nodes/node-i/images/``, its data-root);
        return the run config for partitioner=local (see deploy_split.split_folders)."""
        folders = [n.images for n in self.nodes]
        out, roots = split_folders(self.workdir, self.num_nodes, folders, run_config, copy)
        self.data_roots.update(roots)
        return out

    def up(self) -> None:
        self.prepare()
        self.start_superlink()
        self.start_supernodes()

    def run(
        self,
        app: Path,
        run_config: Path | None = None,
        extra: Sequence[str] = (),
        timeout: float = 600,
    ) -> subprocess.CompletedProcess:
        """``flwr run <app> <connection> --stream``; returns when the run has ended."""
        args = ["run", str(app), CONNECTION, "--stream"]
        if run_config is not None:
            args += ["--run-config", str(run_config)]
        return self.flwr(*args, *extra, timeout=timeout)


# -- CLI --------------------------------------------------------------------------------------
def _cmd_up(ns: argparse.Namespace) -> int:
    dep = LocalDeployment(
        Path(ns.workdir).resolve(),
        ns.nodes,
        tls=not ns.insecure,
        auth=not ns.no_auth,
        warm_worker=ns.warm_worker,
    )
    if ns.split_folders and not ns.run_config:
        print("--split-folders needs --run-config (its data.* keys say what to split)")
        return 2
    try:
        dep.prepare()
        if ns.split_folders:
            ns.run_config = str(dep.split_folders(Path(ns.run_config), copy=ns.copy_images))
            print(f"per-node image folders written; run config for them: {ns.run_config}")
        dep.start_superlink()
        dep.start_supernodes()
        print(
            f"SuperLink at {dep.address} (TLS {'on' if dep.tls else 'off'}, "
            f"node auth {'on' if dep.auth else 'off'}); logs in {dep.logs}"
        )
        for node in dep.nodes:
            data = f", images {dep.data_roots[node.index]}" if node.index in dep.data_roots else ""
            print(
                f"  SuperNode {node.index}: {node.dir} (private prompts {node.private_dir}{data})"
            )
        if ns.run_config or not ns.keep:
            t0 = time.monotonic()
            cfg = Path(ns.run_config).resolve() if ns.run_config else None
            res = dep.run(Path(ns.app).resolve(), cfg, ns.flwr_arg or (), timeout=ns.timeout)
            print(res.stdout)
            print(f"flwr run exited with {res.returncode} after {time.monotonic() - t0:.1f}s")
            if res.returncode != 0:
                return res.returncode
        if ns.keep:
            print(
                f"Running; FLWR_HOME={dep.flwr_home} flwr run {ns.app} {CONNECTION} ... "
                "Press Ctrl-C to stop."
            )
            with contextlib.suppress(KeyboardInterrupt):
                while all(p.poll() is None for p in dep.procs):
                    time.sleep(1)
        return 0
    finally:
        dep.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start SuperLink + N SuperNodes, run the app, stop")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--workdir", default=".deploy")
    up.add_argument("--app", default=str(REPO))
    up.add_argument("--run-config", help="TOML file of run-config overrides")
    up.add_argument("--flwr-arg", action="append", help="extra argument for `flwr run`")
    up.add_argument("--timeout", type=float, default=3600)
    up.add_argument("--insecure", action="store_true", help="no TLS (not for real use)")
    up.add_argument("--no-auth", action="store_true", help="no SuperNode authentication")
    up.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    up.add_argument(
        "--warm-worker",
        choices=("auto", "external", "off"),
        default="auto",
        help="each node's client.warm-worker (auto: a warm worker per node, started on the "
        "first message; off: every message in its own ClientApp process)",
    )
    up.add_argument(
        "--split-folders",
        action="store_true",
        help="give each node its own image folder (data-root) and run with partitioner=local",
    )
    up.add_argument(
        "--copy-images", action="store_true", help="with --split-folders: copy, not symlink"
    )
    certs = sub.add_parser("certs", help="write a CA and a SuperLink server certificate")
    certs.add_argument("--out", required=True)
    certs.add_argument("--san", action="append", default=[], help="extra DNS name or IP")
    certs.add_argument("--days", type=int, default=365)
    certs.add_argument("--force", action="store_true", help="overwrite existing certificates")
    keygen = sub.add_parser("keygen", help="write a SuperNode key pair (OpenSSH ECDSA P-384)")
    keygen.add_argument("--out", required=True, help="private key path; .pub is added")
    ns = parser.parse_args(argv)
    if ns.cmd == "up":
        return _cmd_up(ns)
    if ns.cmd == "certs":
        out = Path(ns.out)
        if (out / "ca.crt").exists() and not ns.force:
            print(f"{out}/ca.crt exists; keeping it (use --force to replace)")
            return 0
        paths = make_certs(out, ns.san, ns.days)
        print("\n".join(str(p) for p in paths.values()))
        return 0
    priv, pub = make_node_key(Path(ns.out))
    print(f"{priv}\n{pub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
