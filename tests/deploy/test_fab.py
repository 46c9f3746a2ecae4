"""The app bundle `flwr run` ships holds every module of the apps: `flwr build` honours
.gitignore, and a pattern that matched a package folder (``runs/`` hid ``task/runs/``) made every
simulation and deployment fail at import while the unit tests passed."""

from __future__ import annotations

import io
import subprocess
import zipfile

from flwr.cli.build import build_fab_from_disk

from tests.deploy import REPO

APP_PACKAGES = ("task", "server_app", "client_app", "protocol", "testkit")


def test_fab_holds_every_module_of_the_apps() -> None:
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO)))
    bundled = set(fab.namelist())
    tracked = subprocess.check_output(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *APP_PACKAGES],
        cwd=REPO,
        text=True,
    ).split()
    modules = [p for p in tracked if p.endswith(".py") and (REPO / p).is_file()]
    assert modules, "no app modules found"
    missing = sorted(set(modules) - bundled)
    assert not missing, f"modules left out of the app bundle: {missing}"
    # Every package folder has its __init__.py tracked (an ignored one is silently skipped).
    folders = {p.rsplit("/", 1)[0] for p in modules}
    assert {f"{d}/__init__.py" for d in folders} <= set(modules), sorted(
        f"{d}/__init__.py" for d in folders if f"{d}/__init__.py" not in modules
    )


def test_fab_leaves_out_the_report_and_stays_far_under_flowers_limit() -> None:
    """docs/results holds the run archive (13 MB of JSONL by the 10-client grid): shipped in
    the bundle, it pushed the FAB past Flower's 10 MiB cap and every `flwr run` failed."""
    from flwr.common.constant import FAB_MAX_SIZE

    data = build_fab_from_disk(REPO)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert not [n for n in names if n.startswith(("docs/", "tests/", "bench/"))]
    assert len(data) < FAB_MAX_SIZE // 4, f"app bundle is {len(data):,} bytes"
