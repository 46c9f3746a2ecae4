"""task.report.plots: every row of a plot is told apart by its line."""

from __future__ import annotations

from task.report.plots import _style


def test_the_first_thirty_rows_each_get_their_own_line_style() -> None:
    """Nine methods and five ablations share a plot: a repeated colour must come dashed."""
    styles = {(s["color"], s["ls"], s["marker"]) for s in map(_style, range(30))}
    assert len(styles) == 30
