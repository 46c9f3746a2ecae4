"""Every run-config key is declared once (task/config); everything else is derived from or
checked against those declarations here."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from task.config import (
    NODE_OVERRIDES,
    NON_SETUP_KEYS,
    PATH_KEYS,
    RESUMABLE_KEYS,
    AppConfig,
    apply_node_config,
    defaults,
    key_info,
    parse_app_config,
    reference_table,
)

REPO = Path(__file__).resolve().parents[3]


def test_pyproject_table_holds_every_key_with_its_declared_default():
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == defaults()


def test_readme_reference_is_the_generated_table():
    readme = (REPO / "README.md").read_text()
    pattern = r"<!-- config-reference:[^\n]*-->\n(.*?)<!-- /config-reference -->"
    block = re.search(pattern, readme, re.S)
    assert block, "README lost its config-reference markers"
    assert block.group(1) == reference_table(), (
        "README's configuration reference differs from the declarations: regenerate it with "
        "python -c 'from task.config import reference_table; print(reference_table())'"
    )


def test_every_key_has_help_and_roles_are_consistent():
    for name, info in key_info().items():
        assert info.roles.help.strip(), name
        if info.roles.path:
            assert info.type is str, name
        if info.roles.node:
            assert info.type is str, name
    # where caches live changes no result: resumable and outside the run name
    for name in ("cache.dir", "data.cache-dir"):
        assert name in RESUMABLE_KEYS and not key_info()[name].roles.in_name
    assert "server.num-rounds" in RESUMABLE_KEYS and "train.lr" not in RESUMABLE_KEYS
    assert set(PATH_KEYS) == {
        "data.root", "data.cache-dir", "cache.dir", "run.dir", "client.private-dir"
    }  # fmt: skip
    assert NODE_OVERRIDES == {
        "private-dir": "client.private-dir", "cache-dir": "cache.dir", "data-root": "data.root",
        "warm-worker": "client.warm-worker",
    }  # fmt: skip
    assert {"method.name", "train.seed", "data.num-clients"} <= NON_SETUP_KEYS
    assert "loss.alpha" not in NON_SETUP_KEYS


def test_the_report_and_launcher_use_the_derived_sets():
    from launcher import cli as launch
    from task import report

    assert set(launch.PATH_KEYS) == set(PATH_KEYS)
    prefixes = getattr(report, "NON_SETUP_PREFIXES", ())
    derived = {k for k in key_info() if k in report.NON_SETUP_KEYS or k.startswith(prefixes)}
    assert derived == set(NON_SETUP_KEYS)


@pytest.fixture
def app() -> AppConfig:
    return parse_app_config({"data.root": "/shared/ucm", "cache.dir": "/c", "model.device": "cpu"})


def test_node_config_overrides_in_one_place(app):
    node = {"partition-id": 3, "private-dir": "/node/private", "cache-dir": "/node/cache"}
    out = apply_node_config(app, {**node, "data-root": "/node/ucm"})
    assert out.client.private_dir == "/node/private"
    assert out.core.cache.dir == "/node/cache"
    assert out.core.data.root == "/node/ucm"
    assert app.core.data.root == "/shared/ucm"  # the run config itself is untouched
    assert apply_node_config(app, {"partition-id": 0}) is app


def test_data_root_is_the_nodes_partition_in_local_mode():
    local = parse_app_config(
        {"data.partitioner": "local", "data.class-names": "beach,river", "model.device": "cpu"}
    )
    out = apply_node_config(local, {"data-root": "/node/images"})
    assert out.core.data.root == ""  # the node reads its folder itself; the config names none


def _imports(path: Path, package_roots: set[str]) -> set[str]:
    """Every import in the module: module level, inside functions, under ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in package_roots}


def test_no_import_cycles():
    """Every import counts (module level, function level, TYPE_CHECKING, a package's own
    __init__): the graph of the repository's packages has no cycle."""
    roots = {"task", "server_app", "client_app", "protocol", "launcher", "testkit", "bench"}
    modules: dict[str, Path] = {}
    for root in roots:
        for path in (REPO / root).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph = {
        name: {t for t in map(resolve, _imports(path, roots)) if t and t != name}
        for name, path in modules.items()
    }
    visiting, done, cycles = set(), set(), []

    def visit(node: str, stack: list[str]) -> None:
        visiting.add(node)
        for nxt in sorted(graph[node]):
            if nxt in visiting:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, [*stack, nxt])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, cycles
