"""What fedrsclip-predict prints: its predictions as an aligned table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any


def format_report(report, fmt: str, source: dict[str, Any] | None = None) -> str:
    if fmt == "json":
        doc = {
            "model": source or {},
            "predictions": [
                {
                    "image": p.image,
                    "top_k": [
                        {"class": c, "index": i, "probability": pr}
                        for c, i, pr in zip(p.classes, p.indices, p.probs, strict=True)
                    ],
                }
                for p in report.predictions
            ],
            "skipped": [{"image": img, "error": err} for img, err in report.skipped],
            "num_predicted": len(report.predictions),
            "num_skipped": len(report.skipped),
        }
        return json.dumps(doc, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "rank", "class", "index", "probability"])
        for p in report.predictions:
            for rank, (c, i, pr) in enumerate(zip(p.classes, p.indices, p.probs, strict=True)):
                w.writerow([p.image, rank + 1, c, i, f"{pr:.6g}"])
        return buf.getvalue()
    return _table(report)


def _table(report) -> str:
    if not report.predictions:
        return ""
    k = max(len(p.classes) for p in report.predictions)
    header = ["image"]
    for r in range(1, k + 1):
        header += [f"top-{r}", "p"]
    rows = [header]
    for p in report.predictions:
        row = [p.image]
        for c, pr in zip(p.classes, p.probs, strict=True):
            row += [c, f"{pr:.4f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if header[i] == "p" else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
