"""Mutation check: does the test suite notice when the code is subtly wrong?

Each mutant changes one thing in one module (a comparison, an arithmetic or boolean operator, a
number, True/False, a dropped `not` or minus sign), is written into a private copy of the
repository, and the module's tests run against it. A mutant the tests still pass on "survived":
either the change is equivalent (it cannot alter any result) or a test is missing. Run it once by
hand, not in CI (minutes per module):

    python scripts/mutation_check.py --out docs/mutation.md
    python scripts/mutation_check.py --only server_app/aggregate.py --out /tmp/m.md

The heavy imports (torch, transformers, POT, Flower, pytest) are loaded once in a parent process;
each mutant runs in a forked child that imports the project's own packages afresh from the copy,
so a mutant costs its tests' run time, not interpreter start-up. The working tree is never
touched.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVER_TESTS = (
    "tests/server_app/test_aggregate.py",
    "tests/server_app/test_reply_rules.py",
    "tests/server_app/test_strategy.py",
    "tests/reliability/test_attacks.py",
)
# Module under test -> the tests that claim to cover it.
TARGETS: dict[str, tuple[str, ...]] = {
    "task/methods/ot.py": (
        "tests/task/methods/test_ot.py",
        "tests/task/methods/test_losses.py",
        "tests/task/methods/test_baselines.py",  # FedOTP's unbalanced plans
    ),
    "task/methods/heads.py": (
        "tests/task/methods/test_losses.py",
        "tests/task/methods/test_method_learners.py",
        "tests/task/methods/test_baselines.py",
        "tests/task/local/test_personal_head.py",
    ),
    "task/methods/fedrsclip.py": (
        "tests/task/methods/test_losses.py",
        "tests/task/methods/test_method_learners.py",
        "tests/task/methods/test_baselines.py",
    ),
    "task/methods/fedpgp.py": (
        "tests/task/methods/test_losses.py",
        "tests/task/methods/test_baselines.py",
    ),
    "server_app/reply_rules.py": SERVER_TESTS,
    "server_app/aggregate.py": SERVER_TESTS,
}
HEAVY_IMPORTS = (
    "torch", "numpy", "ot", "transformers", "flwr", "pytest", "hypothesis", "safetensors",
)  # fmt: skip
SWAP_COMPARE = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}  # fmt: skip
SWAP_BINOP = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.Pow: ast.Mult, ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv,
}  # fmt: skip


@dataclass
class Mutant:
    """One change: where, what it was, what it became, and what the tests said."""

    module: str
    index: int
    line: int
    original: str
    mutated: str
    outcome: str = ""
    seconds: float = 0.0


def _is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return (
        isinstance(parent, ast.Expr)
        and isinstance(node, ast.Constant)
        and isinstance(node.value, str)
    )


def _mutations(node: ast.AST) -> list[ast.AST]:
    """Every single-step replacement of ``node`` (empty when there is none)."""
    out: list[ast.AST] = []
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP_COMPARE:
        new = copy.deepcopy(node)
        new.ops = [SWAP_COMPARE[type(node.ops[0])]()]
        out.append(new)
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in SWAP_BINOP:
        new = copy.deepcopy(node)
        new.op = SWAP_BINOP[type(node.op)]()
        out.append(new)
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append(new)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        out.append(copy.deepcopy(node.operand))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append(ast.Constant(not node.value))
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        value = node.value
        if isinstance(value, int):
            out.append(ast.Constant(value + 1 if value != 1 else 0))
        else:
            out.append(ast.Constant(value * 2 if value else 1.0))
    return out


def _skippable(node: ast.AST, parent: ast.AST | None, field: str) -> bool:
    """Annotations, docstrings and `__all__`-like string data cannot change behaviour here."""
    if field in {"annotation", "returns"}:
        return True
    return _is_docstring(node, parent)


def enumerate_mutants(source: str, module: str) -> list[tuple[Mutant, str]]:
    """Each mutant of ``source`` with the mutated module's text (ast.unparse of the whole tree)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found: list[tuple[Mutant, str]] = []
    path: list[tuple[ast.AST, str, int | None]] = []

    def visit(node: ast.AST, parent: ast.AST | None, field: str) -> None:
        if _skippable(node, parent, field):
            return
        line = getattr(node, "lineno", 0)
        if line and "no mutate" in lines[line - 1]:
            return
        for replacement in _mutations(node):
            if path:
                holder, name, idx = path[-1]
                original = getattr(holder, name)
                if idx is None:
                    setattr(holder, name, replacement)
                else:
                    original[idx] = replacement
                text = ast.unparse(tree)
                if idx is None:
                    setattr(holder, name, original)
                else:
                    original[idx] = node
                mutant = Mutant(
                    module,
                    len(found),
                    line,
                    ast.unparse(node)[:90],
                    ast.unparse(replacement)[:90],
                )
                found.append((mutant, text))
        for name, value in ast.iter_fields(node):
            if isinstance(value, ast.AST):
                path.append((node, name, None))
                visit(value, node, name)
                path.pop()
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        path.append((node, name, i))
                        visit(item, node, name)
                        path.pop()

    visit(tree, None, "")
    return found


ROOT_ONLY = ("runs", "multirun", "outputs", ".cache", ".git")  # outputs, not code (and runs-*)


def _copy_repo(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)

    def ignore(folder: str, names: list[str]) -> set[str]:
        at_root = Path(folder) == ROOT
        return {
            n
            for n in names
            if n in {"__pycache__", ".ruff_cache", ".pytest_cache"}
            or n.endswith(".pyc")
            or (at_root and (n in ROOT_ONLY or n.startswith("runs-")))
        }

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def _run_tests_forked(copy_root: Path, tests: tuple[str, ...], timeout: float) -> str:
    """'killed' when a test fails (or the run hangs), 'survived' when every test passes."""
    pid = os.fork()
    if pid == 0:  # child: import the project from the copy, run the tests, report by exit code
        try:
            os.chdir(copy_root)
            sys.path.insert(0, str(copy_root))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            args = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
            os._exit(int(pytest.main(args)))
        except BaseException:  # noqa: BLE001 - any failure in the child is a failing run
            os._exit(99)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return "survived" if code == 0 else ("killed" if code in (1, 99) else f"error {code}")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "killed (timeout)"
        time.sleep(0.05)


def _prepare(work: Path) -> None:
    """Load the heavy imports once (the forked children inherit them) and copy the repo."""
    for name in HEAVY_IMPORTS:
        __import__(name)
    _copy_repo(work)


def _try_mutants(
    module: str, mutants: list[tuple[Mutant, str]], work: Path, timeout: float
) -> list[Mutant]:
    """Each mutant written into the copy and the module's tests run on it; the copy's module is
    restored afterwards."""
    target, tests = work / module, TARGETS[module]
    for mutant, text in mutants:
        target.write_text(text)
        start = time.monotonic()
        mutant.outcome = _run_tests_forked(work, tests, timeout)
        mutant.seconds = round(time.monotonic() - start, 1)
        if mutant.outcome == "survived":
            where = f"{module}:{mutant.line}"
            print(f"  SURVIVED {where}  {mutant.original!r} -> {mutant.mutated!r}", flush=True)
    target.write_text((ROOT / module).read_text())
    return [m for m, _ in mutants]


def _save(results: list[Mutant], path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps([asdict(m) for m in results], indent=1))


def run(
    modules: list[str], work: Path, timeout: float, done: list[Mutant], save: Path | None
) -> list[Mutant]:
    """Mutants of ``modules`` not already in ``done`` (a resumed run), saved after each module."""
    _prepare(work)
    results: list[Mutant] = list(done)
    finished = {m.module for m in done}
    for module in modules:
        if module in finished:
            continue
        tests = TARGETS[module]
        source = (ROOT / module).read_text()
        (work / module).write_text(
            ast.unparse(ast.parse(source))
        )  # the unparsed original must pass
        baseline = _run_tests_forked(work, tests, timeout * 4)
        if baseline != "survived":
            raise SystemExit(f"{module}: the tests fail on the unmutated module ({baseline})")
        mutants = enumerate_mutants(source, module)
        print(f"{module}: {len(mutants)} mutants, tests {' '.join(tests)}", flush=True)
        tried = _try_mutants(module, mutants, work, timeout)
        results += tried
        killed = sum(m.outcome.startswith("killed") for m in tried)
        print(f"  {killed}/{len(mutants)} killed", flush=True)
        _save(results, save)
    return results


def _ranked(mutants: list[Mutant]) -> list[tuple[Mutant, tuple[str, str, int]]]:
    """Each mutant with its change and how many identical changes precede it in the module."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for m in sorted(mutants, key=lambda m: m.index):
        pair = (m.original, m.mutated)
        out.append((m, (*pair, seen.get(pair, 0))))
        seen[pair] = seen.get(pair, 0) + 1
    return out


def retest(
    modules: list[str], work: Path, timeout: float, done: list[Mutant], save: Path
) -> list[Mutant]:
    """Run the survivors of ``done`` again against today's code and tests (after tests were
    added): a survivor is matched by its change (original -> mutant text) and its rank among
    identical changes, since fixed code moves lines; a survivor whose code is gone drops out.
    Killed mutants stay killed."""
    _prepare(work)
    results = [m for m in done if not (m.module in modules and m.outcome == "survived")]
    for module in modules:
        old = _ranked([m for m in done if m.module == module])
        wanted = {key for m, key in old if m.outcome == "survived"}
        current = enumerate_mutants((ROOT / module).read_text(), module)
        ranked = _ranked([m for m, _ in current])
        again = [(m, t) for (m, t), (_, key) in zip(current, ranked, strict=True) if key in wanted]
        tests = " ".join(TARGETS[module])
        print(f"{module}: {len(again)} survivors again, tests {tests}", flush=True)
        results += _try_mutants(module, again, work, timeout)
        _save(results, save)
    return results


def report(results: list[Mutant], command: str) -> str:
    lines = [
        "# Mutation check",
        "",
        f"<!-- generated by `{command}` -->",
        "",
        "Each mutant changes one operator, number or boolean in one module; the module's tests",
        "run against it (`scripts/mutation_check.py`). A survivor is an equivalent change or a",
        "missing test.",
        "",
        "| module | mutants | killed | survived |",
        "| --- | --- | --- | --- |",
    ]
    for module in dict.fromkeys(m.module for m in results):
        rows = [m for m in results if m.module == module]
        killed = sum(m.outcome.startswith("killed") for m in rows)
        survived = sum(m.outcome == "survived" for m in rows)
        lines.append(f"| `{module}` | {len(rows)} | {killed} | {survived} |")
    lines += ["", "## Survivors", "", "| module:line | original | mutant |", "| --- | --- | --- |"]
    for m in results:
        if m.outcome == "survived":
            lines.append(f"| `{m.module}:{m.line}` | `{m.original}` | `{m.mutated}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedrsclip-mutants"))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    parser.add_argument("--out", type=Path, help="markdown report")
    parser.add_argument(
        "--json", type=Path, help="every mutant and its outcome; an existing file resumes"
    )
    parser.add_argument(
        "--retest", action="store_true", help="run the JSON's survivors again (new tests)"
    )
    args = parser.parse_args()
    done = []
    if args.json is not None and args.json.exists():
        done = [Mutant(**m) for m in json.loads(args.json.read_text())]
    if args.retest:
        if args.json is None or not done:
            raise SystemExit("--retest needs --json with an earlier run's results")
        results = retest(args.only, args.work, args.timeout, done, args.json)
    else:
        results = run(args.only, args.work, args.timeout, done, args.json)
    command = "python scripts/mutation_check.py " + " ".join(sys.argv[1:])
    if args.out:
        args.out.write_text(report(results, command.strip()))
    survived = sum(m.outcome == "survived" for m in results)
    print(f"{len(results)} mutants, {survived} survived")


if __name__ == "__main__":
    main()
