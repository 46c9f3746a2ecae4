"""Which curves still rise at the last round: the cells a longer run may change.

A row rises when its personalised accuracy gained at least :data:`RISING_POINTS` over the last
:data:`RISING_WINDOW` rounds, averaged over its seeds (two rounds, since one round's step is
mostly noise; half a point is two test images of 420). Those rows are where a run with more
rounds (resumed, not restarted: ``server.num-rounds`` may be raised on resume) could move the
table, and nowhere else is it worth the CPU.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from task.report.grouping import Group, method_rank

RISING_WINDOW = 2
RISING_POINTS = 0.5


def last_gain(curve: list[tuple[int, float | None, float | None, float]]) -> float | None:
    """Personalised accuracy at the last evaluated round minus RISING_WINDOW rounds before it
    (points), None when either is missing."""
    acc = {r: p for r, p, _, _ in curve if p is not None}
    if not acc:
        return None
    last = max(acc)
    before = acc.get(last - RISING_WINDOW)
    return None if before is None else 100 * (acc[last] - before)


def rising_rows(feds: Mapping[str, Mapping[str, Group]]) -> list[list[str]]:
    """[federation, method, seeds, mean gain, per-seed gains] for every rising row."""
    rows = []
    for f in sorted(feds):
        for m in sorted(feds[f], key=method_rank):
            g = feds[f][m]
            gains = [last_gain(st.curve) for st in g.stats]
            known = [x for x in gains if x is not None]
            if not known or statistics.fmean(known) < RISING_POINTS:
                continue
            rows.append(
                [
                    f,
                    f"`{m}`",
                    ", ".join(str(r.seed) for r in g.runs),
                    f"{statistics.fmean(known):+.2f}",
                    ", ".join("—" if x is None else f"{x:+.2f}" for x in gains),
                ]
            )
    return rows
