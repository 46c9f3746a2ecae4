"""What a user watching a run sees: one line per round with its evaluation as soon as it arrives
(with fused evaluation, round r's accuracy comes back with round r + 1's replies), the elapsed
time and an estimate of what is left, a word before round 1 about the feature extraction it
pays for, and TensorBoard scalars beside metrics.jsonl (``run.tensorboard``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("server_app.loop")
# While round 1 extracts features: a line as replies come, at most this often (and the last).
REPLY_LINE_EVERY_S = 10.0

# metrics.jsonl field -> TensorBoard tag: what an evaluation brings, and what a round brings.
EVAL_SCALARS = {
    "personalised_accuracy": "accuracy/personalised",
    "global_accuracy": "accuracy/global",
    "zeroshot_accuracy": "accuracy/zeroshot",
    "personalised_loss": "loss/personalised",
}
ROUND_SCALARS = {
    "train_loss": "loss/train",
    "bytes_from_clients": "bytes/up",
    "bytes_to_clients": "bytes/down",
    "round_seconds": "time/round_seconds",
}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if _finite(value) else "n/a"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def eval_text(server_round: int, fields: dict[str, Any], zeroshot: float | None) -> str:
    """``round 3 eval: personalised 77.6% global 76.9% (zero-shot 67.9%)``."""
    text = (
        f"round {server_round} eval: personalised {_pct(fields.get('personalised_accuracy'))} "
        f"global {_pct(fields.get('global_accuracy'))}"
    )
    zs = fields.get("zeroshot_accuracy", zeroshot)
    return text + (f" (zero-shot {_pct(zs)})" if _finite(zs) else "")


class RunProgress:
    """Round lines, the time estimate and TensorBoard events of one ServerApp run."""

    def __init__(
        self, root: Path, first_round: int, last_round: int, tensorboard: bool = True
    ) -> None:
        self.first_round, self.last_round = first_round, last_round
        self.started = time.perf_counter()
        self.zeroshot: float | None = None
        self.extracting = False  # set by announce_features: round 1 pays the extraction
        self.writer = _writer(root / "tensorboard") if tensorboard else None

    def announce_features(self, num_images: int | None, cache_dir: str, model: str) -> None:
        """Before round 1: what the first round spends its time on."""
        what = f"their {num_images:,} images" if num_images else "their images"
        log.info(
            "round 1: the clients first extract and cache the frozen image features of %s "
            "with %s (only the first round pays this; later rounds read the cache at %s)",
            what,
            Path(model).name,
            cache_dir,
        )
        self.extracting = True

    def reply_counter(self, server_round: int) -> Callable[[int, int], None] | None:
        """During the extraction round: a callback for the transport that logs how many clients
        have extracted their features and replied (throttled), else None."""
        if not (self.extracting and server_round == self.first_round):
            return None
        start = time.perf_counter()
        last = [-REPLY_LINE_EVERY_S]

        def arrived(replies: int, sent: int) -> None:
            now = time.perf_counter() - start
            if replies < sent and now - last[0] < REPLY_LINE_EVERY_S:
                return
            last[0] = now
            log.info(
                "round %d: %d/%d clients have extracted their features and replied (%s)",
                server_round,
                replies,
                sent,
                _duration(now),
            )

        return arrived

    def evaluated(self, server_round: int, fields: dict[str, Any]) -> str:
        """Round ``server_round``'s evaluation arrived: the text for the log line; scalars."""
        if _finite(fields.get("zeroshot_accuracy")):
            self.zeroshot = fields["zeroshot_accuracy"]
        self.scalars(server_round, fields, EVAL_SCALARS)
        return eval_text(server_round, fields, self.zeroshot)

    def round_done(self, record: dict[str, Any], evaluation: str | None, tally: Any) -> None:
        """The round's line: loss, what arrived of an earlier round's evaluation, counts, time
        and what is left."""
        r = int(record["round"])
        loss = record.get("train_loss")
        parts = [f"round {r}: train_loss={loss:.4g}" if _finite(loss) else f"round {r}:"]
        if evaluation:
            parts.append(evaluation)
        counts = (
            f"ok={record.get('clients_ok')} failed={tally.failed} rejected={len(tally.rejected)}"
        )
        log.info("%s | %s (%.1f s)", " | ".join(parts), counts, record["round_seconds"])
        self.scalars(r, record, ROUND_SCALARS)
        elapsed = time.perf_counter() - self.started
        done = r - self.first_round + 1
        left = self.last_round - r
        if left > 0 and done > 0:
            # Round 1 pays the feature extraction: estimate from the later rounds when there are.
            later = record["round_seconds"] if r > 1 else elapsed / done
            log.info(
                "  elapsed %s, about %s left (%d round%s)",
                _duration(elapsed),
                _duration(later * left),
                left,
                "" if left == 1 else "s",
            )

    def scalars(self, server_round: int, fields: dict[str, Any], tags: dict[str, str]) -> None:
        if self.writer is None:
            return
        for key, tag in tags.items():
            if _finite(fields.get(key)):
                self.writer.add_scalar(tag, float(fields[key]), server_round)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _writer(log_dir: Path) -> Any:
    """A TensorBoard writer (None, with a warning, where tensorboard is not installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard is a dependency; a trimmed install may lack it
        log.warning("run.tensorboard: no TensorBoard events (%s)", err)
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir))
