"""The report's tables as values: a pandas frame cut to its columns, every cell formatted once.

    t = table(trials, ["study", "trial", "eval_loss"], left=("study", "trial"))
    t.columns, t.rows[0]        # ["study", "trial", "eval_loss"], ["demo", "a1b2c3d4", "2.346"]

Numbers are written by :func:`study.metrics.number` (4 significant digits, "-" for missing),
as in the summary and the live table. Nothing here writes HTML: the template
(``analysis/templates/report.html.j2``) draws a Table, escaping every cell.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from study.metrics import number


class Table(NamedTuple):
    """Text cells ready to draw; ``left`` flags the left-aligned (text) columns."""

    columns: list[str]
    rows: list[list[str]]
    left: list[bool]
    wrap: bool  # long text (generations, commands) wraps inside its cell


def table(
    frame: pd.DataFrame, columns: list[str] | None = None, left: tuple[str, ...] = (),
    wrap: bool = False,
) -> Table:
    """``frame``'s ``columns`` (all by default) as a :class:`Table`."""
    columns = list(frame.columns) if columns is None else list(columns)
    cells = frame[columns].astype(object).map(number)
    return Table(columns, cells.to_numpy().tolist(), [c in left for c in columns], wrap)
