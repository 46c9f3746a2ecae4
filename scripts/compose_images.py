#!/usr/bin/env python
"""Build the docker-compose demo's images without an image registry (podman or Docker).

Machines that reach Debian and PyPI but no registry cannot pull ``flwr/*``. This builds, each
step skipped when an image built from the same inputs is already there:

1. a Debian base from ``debootstrap`` (rootfs tarball cached in ``--cache``);
2. local stand-ins of Flower's images under their official names (docker/flwr-standin/), only
   where the real image is neither present nor pullable, so docker/Dockerfile keeps its normal
   ``FROM flwr/superexec:...``;
3. the app image from docker/Dockerfile, with a local torch wheel when the host has one (pip's
   find-links: the CPU build here), the host's extra CA certificates and optional no-deps
   packages (``timm`` for a timm vision tower).

::

    python scripts/compose_images.py install      # podman, debootstrap, ... (root, Debian)
    python scripts/compose_images.py build        # the three steps above; prints timings

The engine (podman or Docker, ``install``, ``check``) is in compose_engine.py beside this file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Its sibling modules, also when this file is loaded by path (tests) rather than run.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from compose_engine import (  # noqa: E402
    CACHE,
    LABEL,
    Engine,
    detect_engine,
    install,
    missing_tools,
    run,
)

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
FLWR_VERSION = "1.41.0"
BASE_TAG = f"{FLWR_VERSION}-py3.11-ubuntu24.04"  # docker/Dockerfile's default
DEBIAN_IMAGE = "localhost/fedrsclip/debian:bookworm"
CA_DIR = DOCKER / "ca-certificates"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")


# -- inputs -----------------------------------------------------------------------------------
def digest(*parts: str | bytes | Path) -> str:
    """sha256 over files (path and content; folders recursively, sorted) and strings."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                if "__pycache__" in f.parts:
                    continue
                h.update(str(f.relative_to(REPO) if f.is_relative_to(REPO) else f).encode())
                h.update(f.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def host_ca_certs() -> list[Path]:
    """The host's extra CAs (a TLS-inspecting package proxy's), to trust inside builds."""
    return sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []


@contextlib.contextmanager
def ca_certs_in_context(certs: Sequence[Path]) -> Iterator[None]:
    """Copy ``certs`` into docker/ca-certificates/ for one build; remove them afterwards."""
    added = []
    try:
        for cert in certs:
            dest = CA_DIR / f"extra-{cert.name}"
            shutil.copyfile(cert, dest)
            added.append(dest)
        yield
    finally:
        for dest in added:
            dest.unlink(missing_ok=True)


def pip_find_links() -> list[Path]:
    """Folders pip searches for wheels on this host (PIP_FIND_LINKS, pip config)."""
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    res = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    dirs += re.findall(r"find-links='([^']+)'", res.stdout)
    return [Path(d) for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def local_torch_wheel(version: str | None = None) -> Path | None:
    """The wheel of this host's torch (e.g. 2.13.0+cpu) in a find-links folder, if any."""
    if version is None:
        try:
            from importlib.metadata import version as pkg_version

            version = pkg_version("torch")
        except Exception:
            return None
    for folder in pip_find_links():
        for wheel in sorted(folder.glob(f"torch-{version}-cp311-*.whl")):
            return wheel
    return None


# -- images -----------------------------------------------------------------------------------
def debian_mirror() -> str:
    """The Debian mirror apt uses on this host (the registry these machines can reach)."""
    for src in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        found = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", src.read_text(), re.M)
        if found:
            return found[1]
    lst = Path("/etc/apt/sources.list")
    if lst.exists():
        found = re.search(r"^deb\s+(\S+/debian)/?\s+\w+", lst.read_text(), re.M)
        if found:
            return found[1]
    return "http://deb.debian.org/debian"


def build_debian_base(engine: Engine, cache: Path = CACHE, suite: str = "bookworm") -> str:
    """A minbase Debian image from debootstrap; the rootfs tarball is kept in ``cache``."""
    if engine.image_label(DEBIAN_IMAGE) is not None:
        return "present"
    tarball = cache / f"debian-{suite}-minbase.tar"
    if not tarball.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(["debootstrap", "--variant=minbase", suite, str(rootfs), debian_mirror()])
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for p in (rootfs / sub).glob("*"):
                    if p.is_file():
                        p.unlink()
            run(["tar", "-C", str(rootfs), "-cf", f"{tarball}.part", "."])
            Path(f"{tarball}.part").rename(tarball)
    engine("import", "--change", 'CMD ["/bin/bash"]', str(tarball), DEBIAN_IMAGE)
    return "built"


def flower_image_names(version: str = FLWR_VERSION) -> dict[str, str]:
    """Stand-in target -> the official name the compose files and the Dockerfile use."""
    return {
        "superlink": f"docker.io/flwr/superlink:{version}",
        "supernode": f"docker.io/flwr/supernode:{version}",
        "superexec": f"docker.io/flwr/superexec:{version}-py3.11-ubuntu24.04",
    }


def standin_inputs(certs: Sequence[Path] = (), version: str = FLWR_VERSION) -> str:
    """What the stand-in images are built from (their label)."""
    return digest(DOCKER / "flwr-standin" / "Dockerfile", version, *[c.read_bytes() for c in certs])


def plan_flower_images(
    engine: Engine, mode: str, inputs: str, version: str = FLWR_VERSION
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Which of ``flwr/superlink``, ``flwr/supernode``, ``flwr/superexec`` to build.

    ``auto``: keep an official image that is present or pullable, else the stand-in;
    ``standin``: the stand-in (rebuilt when its inputs change); ``pull``: never build.
    Returns (image -> status, [(stand-in target, image) to build]).
    """
    status: dict[str, str] = {}
    todo = []
    for target, image in flower_image_names(version).items():
        label = engine.image_label(image)
        if label == inputs:
            status[image] = "stand-in, up to date"
        elif label == "" and mode != "standin":
            status[image] = "present"  # not ours: an official image
        elif (
            mode != "standin"
            and label is None
            and engine("pull", image, check=False, timeout=300).returncode == 0
        ):
            status[image] = "pulled"
        elif mode == "pull":
            raise RuntimeError(f"{image} is not here and could not be pulled")
        else:
            todo.append((target, image))
    return status, todo


def build_standins(
    engine: Engine,
    todo: Sequence[tuple[str, str]],
    inputs: str,
    certs: Sequence[Path] = (),
    version: str = FLWR_VERSION,
) -> None:
    """docker/flwr-standin/Dockerfile's targets, tagged with Flower's names."""
    with ca_certs_in_context(certs):
        for target, image in todo:
            engine(
                "build", "-f", str(DOCKER / "flwr-standin" / "Dockerfile"), "--target", target,
                "--build-arg", f"DEBIAN_BASE={DEBIAN_IMAGE}",
                "--build-arg", f"FLWR_VERSION={version}",
                "--label", f"{LABEL}={inputs}", "--label", "fedrsclip.standin=1",
                "-t", image, str(DOCKER),
                timeout=1800,
            )  # fmt: skip


@dataclass
class AppBuild:
    """Build inputs of docker/Dockerfile (see its ARGs)."""

    tag: str = "fedrsclip-app:1.41.0-cpu"
    torch_index: str | None = None  # None: the local wheel if found, else the CPU index
    torch_spec: str | None = None
    extra_nodeps: str = ""
    certs: Sequence[Path] = ()

    def args(self, engine: Engine) -> tuple[dict[str, str], list[str]]:
        """(build args, extra engine flags): a local torch wheel is mounted (podman only)."""
        wheel = (
            local_torch_wheel() if engine.name == "podman" and self.torch_index is None else None
        )
        args = {"EXTRA_NODEPS": self.extra_nodeps}
        flags: list[str] = []
        if wheel is not None:
            version = wheel.name.split("-")[1]
            args |= {"TORCH_INDEX": "", "WHEELS": str(wheel.parent)}
            args["TORCH_SPEC"] = self.torch_spec or f"torch=={version}"
            flags = ["-v", f"{wheel.parent}:{wheel.parent}:ro"]
        else:
            args["TORCH_INDEX"] = self.torch_index or "https://download.pytorch.org/whl/cpu"
            if self.torch_spec:
                args["TORCH_SPEC"] = self.torch_spec
        return args, flags


def build_app_image(engine: Engine, app: AppBuild, base_id: str) -> str:
    """docker/Dockerfile; rebuilt when the code, the build inputs or the base image change."""
    args, flags = app.args(engine)
    arg_hash = digest(
        json.dumps(args, sort_keys=True), base_id, *[c.read_bytes() for c in app.certs]
    )
    sources = [DOCKER / "Dockerfile", REPO / "pyproject.toml", REPO / "README.md"]
    sources += [REPO / d for d in ("task", "server_app", "client_app", "bench", "scripts")]
    inputs = f"{arg_hash}-{digest(*sources)}"
    label = engine.image_label(app.tag)
    if label == inputs:
        return "up to date"
    cmd = ["build", "-f", str(DOCKER / "Dockerfile"), "-t", app.tag, *flags]
    if label is not None and not label.startswith(arg_hash):
        cmd.append("--no-cache")  # buildah may reuse a layer whose build arg changed
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd += ["--label", f"{LABEL}={inputs}", str(REPO)]
    with ca_certs_in_context(app.certs):
        engine(*cmd, timeout=3600)
    return "built"


def image_id(engine: Engine, image: str) -> str:
    """The image's id: the app image is rebuilt when its base changes."""
    return engine("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()


def build_all(
    engine: Engine, app: AppBuild, flower: str = "auto", version: str = FLWR_VERSION
) -> dict[str, object]:
    """Every image the demo needs; returns what happened and the seconds of each step."""
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    inputs = standin_inputs(app.certs, version)
    status, todo = plan_flower_images(engine, flower, inputs, version)
    if todo:
        status[DEBIAN_IMAGE] = build_debian_base(engine)
        seconds["debian_base"] = round(time.monotonic() - t0, 1)
        t1 = time.monotonic()
        build_standins(engine, todo, inputs, app.certs, version)
        for _, image in todo:
            status[image] = "stand-in built"
        seconds["flower_images"] = round(time.monotonic() - t1, 1)
    t2 = time.monotonic()
    base = image_id(engine, flower_image_names(version)["superexec"])
    status[app.tag] = build_app_image(engine, app, base)
    seconds["app_image"] = round(time.monotonic() - t2, 1)
    return {"images": status, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="apt-get the podman stack, pip-install podman-compose")
    sub.add_parser("check", help="say what is missing")
    build = sub.add_parser("build", help="Debian base, Flower images, app image")
    build.add_argument("--engine", choices=["auto", "podman", "docker"], default="auto")
    build.add_argument("--flower-images", choices=["auto", "standin", "pull"], default="auto")
    build.add_argument("--tag", default=AppBuild.tag)
    build.add_argument("--torch-index", help="wheel index for torch (default: local wheel/CPU)")
    build.add_argument("--torch-spec", help='e.g. "torch==2.13.0"')
    build.add_argument("--extra-nodeps", default="", help='e.g. "timm" (installed --no-deps)')
    build.add_argument("--ca-cert", action="append", type=Path, help="default: the host's")
    ns = parser.parse_args(argv)
    if ns.cmd == "install":
        install()
        return 0
    if ns.cmd == "check":
        missing = missing_tools()
        print("missing: " + ", ".join(missing) if missing else "ready")
        return 1 if missing else 0
    engine = detect_engine(ns.engine)
    if engine is None:
        print(f"no container engine; missing: {', '.join(missing_tools())}")
        return 1
    app = AppBuild(ns.tag, ns.torch_index, ns.torch_spec, ns.extra_nodeps)
    app.certs = ns.ca_cert if ns.ca_cert is not None else host_ca_certs()
    print(json.dumps(build_all(engine, app, ns.flower_images), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
