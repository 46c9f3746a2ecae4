"""A digest of the code both apps run (every module of task/ and protocol/), so a ClientApp can
refuse to serve a ServerApp running other code.

In a simulation the ClientApps of `flwr run` import the modules found in the directory the local
SuperLink was started from, ahead of the app bundle: a SuperLink started in another checkout makes
every client silently run that checkout's code (seen here: a run's clients ran an older commit).
The server puts this digest in every message's config; the client compares it with its own.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGES = ("task", "protocol")


def packages_digest(packages: tuple[str, ...]) -> str:
    """sha256 over the relative paths and bytes of the packages' .py files (16 hex digits)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def app_digest() -> str:
    """The digest of the code both apps run (``PACKAGES``)."""
    return packages_digest(PACKAGES)


def code_location() -> str:
    return str(Path(__file__).resolve().parents[1])
