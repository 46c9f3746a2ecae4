"""Tests of the deployment tooling in scripts/ and docker/ (the scripts are not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py as a module (cached in sys.modules under ``scripts_<name>``)."""
    key = f"scripts_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# FEDRSCLIP_REQUIRE=podman,compose (set by .ci/run once it installed them): a test that needs
# one of these and would skip for lack of it fails instead, so a broken install step cannot turn
# the deployment tests into silent skips.
REQUIRE_ENV = "FEDRSCLIP_REQUIRE"


def skip_or_fail(need: str, reason: str) -> None:
    """pytest.skip(reason), or pytest.fail when FEDRSCLIP_REQUIRE names ``need``."""
    import os

    import pytest

    required = {x.strip() for x in os.environ.get(REQUIRE_ENV, "").split(",") if x.strip()}
    if need in required:
        pytest.fail(f"{reason} (required by {REQUIRE_ENV}={os.environ[REQUIRE_ENV]})")
    pytest.skip(reason)
