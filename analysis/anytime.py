"""Anytime curves of searchers: best quality found so far against the compute spent.

    info = anytime_info({"random": [run, ...], ...}, total=960, reference=0.0531)
    plot_anytime(info, "anytime.png")

A run is a list of trials in the order they ran, each ``(steps charged, value, finished)``;
lower values are better (eval loss). The best-so-far counts finished trials only. Compute is on
a shared axis (a share of ``total``, e.g. the grid's trial-steps) so runs of different lengths
can be summarised by median and spread at every point.

The figure is drawn like :mod:`analysis.render`'s: on a matplotlib Figure with its own Agg
canvas, without pyplot, so no display is needed and no global matplotlib state changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

Run = list[tuple[float, float, bool]]


class AnytimeInfo(NamedTuple):
    """What the figure draws: per searcher, best-so-far median / min / max on a compute grid."""

    x: np.ndarray  # compute as a share of `total`, shape (n,)
    median: dict[str, np.ndarray]  # searcher -> (n,), NaN before its first finished trial
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]
    reference: float  # the best value of the exhaustive grid


def best_so_far(run: Run, x: np.ndarray, total: float) -> np.ndarray:
    """Best finished value after ``x * total`` compute (NaN before any finished trial)."""
    used = np.cumsum([steps for steps, _, _ in run], dtype=float)
    found = np.minimum.accumulate([v if done else np.inf for _, v, done in run] or [np.inf])
    # the last trial completed within each budget (-1: none yet)
    last = np.searchsorted(used, np.asarray(x) * total + 1e-9, side="right") - 1
    out = np.where(last >= 0, found[np.maximum(last, 0)], np.inf)
    return np.where(np.isfinite(out), out, np.nan)


def anytime_info(
    runs: dict[str, list[Run]], total: float, reference: float, points: int = 201
) -> AnytimeInfo:
    """Median and spread over seeds of each searcher's best-so-far curve."""
    x = np.linspace(0.0, 1.0, points)
    median, low, high = {}, {}, {}
    for name, seed_runs in runs.items():
        curves = np.array([best_so_far(run, x, total) for run in seed_runs])
        # A seed with no finished trial yet counts as "nothing found" (inf) in the median.
        filled = np.where(np.isnan(curves), np.inf, curves)
        med = np.median(filled, axis=0)
        median[name] = np.where(np.isfinite(med), med, np.nan)
        low[name] = np.nanmin(np.where(np.isnan(curves), np.inf, curves), axis=0)
        low[name] = np.where(np.isfinite(low[name]), low[name], np.nan)
        hi = np.max(filled, axis=0)
        high[name] = np.where(np.isfinite(hi), hi, np.nan)
    return AnytimeInfo(x, median, low, high, reference)


def plot_anytime(
    info: AnytimeInfo, path: str | Path, tolerance: float = 0.01, highlight: str | None = None
) -> None:
    """Draw each searcher's median gap to the grid's best (log scale) against compute.

    The gap is ``best / reference - 1`` in percent; the dotted line is the tolerance. Only the
    ``highlight`` searcher gets its min-max band, so the medians stay readable.
    """
    # As in analysis.render: a Figure on its own Agg canvas, no pyplot, no global state changed
    # (the caller's backend and open figures are left alone).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def gap(values: np.ndarray) -> np.ndarray:  # % above the grid's best; floor for log scale
        return np.maximum(100 * (values / info.reference - 1), 0.05)

    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    for i, (name, med) in enumerate(info.median.items()):
        width = 2.4 if name == highlight else 1.4
        (line,) = ax.step(
            100 * info.x, gap(med), where="post", label=name, lw=width, ls=styles[i % 6]
        )
        if name == highlight:
            ax.fill_between(
                100 * info.x,
                gap(info.low[name]),
                gap(info.high[name]),
                step="post",
                alpha=0.15,
                color=line.get_color(),
                label=f"{name}: min-max over seeds",
            )
    ax.axhline(100 * tolerance, color="gray", lw=0.8, ls=":", label=f"within {tolerance:.0%}")
    ax.set_yscale("log")
    ax.set_xlim(0, 100)
    ax.set_xlabel("compute spent (% of the exhaustive grid's trial-steps)")
    ax.set_ylabel("best finished trial: % above the grid's best eval loss")
    ax.set_title("Search efficiency (median over seeds; 0.05% = found the best)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
