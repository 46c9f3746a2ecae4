"""Write the benchmark tables from ``bench/results/*.json`` into docs/performance.md.

Each table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` markers; the prose
around them is written by hand and never touched. A result file that does not exist leaves its
block as it is. ``python -m bench`` calls this after the benchmarks; alone::

    python -m bench.render
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"


def _local_step(doc: dict[str, Any]) -> str:
    from bench.local_step import markdown

    return markdown(doc["rows"])


def _bytes(doc: dict[str, Any]) -> str:
    from bench.message_bytes import markdown

    return markdown(doc["rows"])


def _simulation(doc: dict[str, Any]) -> str:
    from bench.simulation import markdown

    return markdown(doc["results"])


def _deploy(doc: dict[str, Any]) -> str:
    from bench.deploy_overhead import markdown

    return markdown(doc)


def _client_start(doc: dict[str, Any]) -> str:
    from bench.client_start import markdown

    return markdown(doc)


BLOCKS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "local_step": ("local_step.json", _local_step),
    "message_bytes": ("message_bytes.json", _bytes),
    "simulation": ("simulation.json", _simulation),
    "deploy_overhead": ("deploy_overhead.json", _deploy),
    "client_start": ("client_start.json", _client_start),
}


def render(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every block whose result file exists regenerated; and the blocks done."""
    done = []
    for name, (file, make) in BLOCKS.items():
        path = results / file
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(.*?)(<!-- /bench:{name} -->)", re.S)
        if not path.is_file() or not pattern.search(text):
            continue
        doc = json.loads(path.read_text())
        when = f"{doc.get('command', '')}, {doc.get('date', '')}"
        stamp = f"<!-- generated from bench/results/{file} ({when}) -->\n"
        try:
            body = stamp + make(doc)
        except KeyError as err:  # a result file from an older version of its bench
            print(f"{file}: no field {err}; rerun its bench to regenerate the table", flush=True)
            continue
        text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(3), text)
        done.append(name)
    return text, done


def main(argv: list[str] | None = None) -> int:
    text, done = render(DOC.read_text())
    DOC.write_text(text)
    print(f"docs/performance.md: regenerated {', '.join(done) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
