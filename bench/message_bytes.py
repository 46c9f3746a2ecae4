"""Bytes per client per round, measured from the serialised Flower messages.

One real round (the ServerApp round loop and the ClientApp handlers over the in-process Grid of
testkit.grid) with a random CLIP whose prompt width is CLIP ViT-B/16's (512, so the shared prompt is
4 x 512 = 2,048 numbers, an 8,192-byte fp32 payload) and the stand-in's (256), in fp32 and with
``server.fp16-transport``. Every message sent and every reply is serialised with Flower's own
``message_to_proto`` (content and metadata, as it goes on the wire inside gRPC framing) and
compared with the fp32 payload::

    python -m bench.message_bytes           # table + bench/results/message_bytes.json

Train messages carry the shared prompt both ways. With ``server.eval-mode=separate`` evaluate
messages carry it down again (the round's aggregate) and metrics up, so with
``server.eval-every=1`` a client downloads the prompt twice a round; with ``fused`` (the default)
the evaluation rides in the next round's train message, which carries that aggregate anyway.
Each setting runs 3 rounds; the per-round totals are those of round 2 (a round in the middle of a
run: fused evaluation in, no final evaluate message).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def measure(
    work: Path, text_width: int, fp16: bool, clients: int = 3, eval_mode: str = "fused"
) -> dict[str, Any]:
    """Run 3 rounds and return the mean serialised size of each kind of message of round 2, and
    that round's download and upload per client."""
    from flwr.common.serde import message_to_proto

    from client_app.app import app as client_app
    from protocol.messages import content_bytes
    from server_app.loop import run_server
    from testkit.grid import InProcessGrid, task_identity
    from testkit.images import TINY_CLASSES, write_synthetic_images
    from testkit.models import save_tiny_clip
    from testkit.run_config import tiny_run_config

    tag = f"w{text_width}-{'fp16' if fp16 else 'fp32'}-{eval_mode}"
    model = save_tiny_clip(work / f"clip-{text_width}", text_width=text_width, text_layers=1)
    images = work / "images"
    if not images.exists():
        write_synthetic_images(images, TINY_CLASSES, per_class=12)
    cfg = tiny_run_config(
        work / tag,
        model,
        images,
        num_clients=clients,
        **{
            "server.num-rounds": 3,
            "server.fp16-transport": fp16,
            "server.eval-mode": eval_mode,
            "run.name": tag,
        },
    )
    grid = InProcessGrid(client_app, cfg, clients)
    with task_identity():
        run_server(grid, cfg)
    sizes: dict[str, list[tuple[int, int]]] = {}
    round_two = {
        m.metadata.message_id
        for m in grid.sent
        if m.content.config_records["config"]["server-round"] == 2
    }
    replies = [m for m in grid.replies if m.metadata.reply_to_message_id in round_two]
    sent = [m for m in grid.sent if m.metadata.message_id in round_two]
    for direction, msgs in (("down", sent), ("up", replies)):
        for msg in msgs:
            kind = f"{msg.metadata.message_type.split('.')[0]}_{direction}"
            sizes.setdefault(kind, []).append(
                (message_to_proto(msg).ByteSize(), content_bytes(msg))
            )
    numel = 4 * text_width  # n_ctx x width: the shared prompt
    payload = 4 * numel
    row: dict[str, Any] = {
        "text_width": text_width,
        "shared_numbers": numel,
        "fp32_payload_bytes": payload,
        "fp16_transport": fp16,
        "eval_mode": eval_mode,
    }
    for kind, pairs in sorted(sizes.items()):
        wire = sum(w for w, _ in pairs) / len(pairs)
        row[f"{kind}_bytes"] = round(wire, 1)
        row[f"{kind}_content_bytes"] = round(sum(c for _, c in pairs) / len(pairs), 1)
        row[f"{kind}_over_payload"] = round(wire / payload, 4)
    down = sum(row.get(f"{k}_down_bytes", 0) for k in ("train", "evaluate"))
    up = sum(row.get(f"{k}_up_bytes", 0) for k in ("train", "evaluate"))
    row.update(
        round_down_bytes=down,
        round_up_bytes=up,
        round_down_over_payload=round(down / payload, 4),
        round_up_over_payload=round(up / payload, 4),
    )
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per (prompt width, transport): wire bytes of each message kind vs the payload."""
    head = (
        "| prompt width | transport | evaluation | payload fp32 (B) | train down (B, x payload) "
        "| train up | evaluate down | evaluate up | round down / up (x payload) |"
    )
    out = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:

        def cell(kind: str, row: dict[str, Any] = r) -> str:
            if f"{kind}_bytes" not in row:
                return "-"
            return f"{row[f'{kind}_bytes']:.0f} ({row[f'{kind}_over_payload']:.3f}x)"

        out.append(
            f"| {r['text_width']} | {'fp16' if r['fp16_transport'] else 'fp32'} "
            f"| {r.get('eval_mode', 'separate')} "
            f"| {r['fp32_payload_bytes']} | {cell('train_down')} | {cell('train_up')} "
            f"| {cell('evaluate_down')} | {cell('evaluate_up')} "
            f"| {r['round_down_over_payload']:.3f}x / {r['round_up_over_payload']:.3f}x |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "message_bytes.json"))
    ap.add_argument("--target", type=float, default=1.25, help="max wire / fp32 payload")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedrsclip-bytes-") as tmp:
        for width in (512, 384):
            for fp16 in (False, True):
                for mode in ("fused", "separate"):
                    rows.append(measure(Path(tmp), width, fp16, eval_mode=mode))
    print(markdown(rows))
    vit = next(
        r
        for r in rows
        if r["text_width"] == 512 and not r["fp16_transport"] and r["eval_mode"] == "fused"
    )
    worst = max(vit["train_down_over_payload"], vit["train_up_over_payload"])
    doc = {
        "command": " ".join(["python -m bench.message_bytes", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "target": {
            "what": "train message (down and up) wire bytes / 8,192-byte fp32 payload, width 512",
            "max_ratio": ns.target,
            "measured": worst,
            "met": worst <= ns.target,
        },
        "round_download_target": {
            "what": "download per client per round with evaluation every round (fused), width "
            "512, fp32, / payload",
            "max_ratio": 1.1,
            "measured": vit["round_down_over_payload"],
            "met": vit["round_down_over_payload"] <= 1.1,
        },
        "rows": rows,
    }
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"train message / payload at width 512, fp32: {worst:.3f}x (target <= {ns.target}x)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
