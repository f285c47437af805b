"""Draw the figures of :mod:`analysis.figure_data` with matplotlib (Agg: no display needed).

    fig = pareto_figure(pareto_info(trials, "peak_mem_mb", "eval_loss"))
    save(fig, out_dir / "pareto_eval_loss_peak_mem_mb")   # -> .png and .svg

Markers say what a point is, colours say which study (or, for curves, which factor level):
filled circle = finished, hollow circle = stopped by ASHA, red X = errored, square = the base
model, diamond = full fine-tuning. Where the trials are of several models, a Pareto figure's
colours say which model instead, and each study's front line has a dash pattern of its own.
Every function returns the Figure.

Figures are made without pyplot, on an Agg canvas, and the style is applied with rc_context: no
display is needed (servers, CI), and importing this module changes no global matplotlib state
(a notebook keeps its own backend and settings).
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figure_data import BASELINE_LEVELS, CurvesInfo, ParetoInfo, SeedsInfo
from analysis.selection import UNTRAINED_BASE, model_short
from study import metrics as M

STYLE = {"font.size": 9, "svg.hashsalt": "lora-study"}  # a fixed salt: stable SVG ids
BASELINE_MARKERS = {"base": "s", "full": "D"}
ERRORED = "#d62728"


def _new_figure(**kwargs) -> Figure:
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _styled(draw):
    """Run a drawing function inside the report's rc_context."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def study_colors(studies) -> dict[str, str]:
    """One colour per study, in the order given."""
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {s: cycle[i % len(cycle)] for i, s in enumerate(studies)}


def axis_label(name: str) -> str:
    """A metric name with its unit spelled out for an axis."""
    units = {"_mb": " (MB)", "_ms": " (ms)", "_s": " (s)"}
    for suffix, unit in units.items():
        if name.endswith(suffix) and not name.endswith("_per_s"):
            return name + unit
    if "per_token" in name:
        return name + " (ms/token)"
    return name + (" (ms/example)" if "per_example" in name else "")


def _scatter(ax, rows, color: str, model_colors: dict[str, str] | None = None) -> None:
    """Trials of one study, with a marker per status / baseline kind; coloured by model when
    ``model_colors`` is given."""
    for _, r in rows.iterrows():
        if model_colors:
            color = model_colors.get(r["model"], "0.5")
        kind = dict(s=36, color=color, edgecolors=color, zorder=3, linewidths=1.2)
        if r["baseline"]:
            kind.update(marker=BASELINE_MARKERS.get(r["method"], "P"), s=60, edgecolors="black")
        if r["status"] == "errored":
            kind.update(marker="X", color=ERRORED, edgecolors=ERRORED, s=50)
        elif r["status"] != "finished":
            kind.update(facecolors="none", color=None, alpha=0.8)
        ax.scatter([r["x"]], [r["y"]], **kind)


DASHES = ["-", "--", ":", "-."]  # each study's front line, when colours say the model


KINDS = ("finished", "stopped", "errored", "base", "full")  # the legend's markers, in order


def _kinds(points) -> set[str]:
    """What the points are, as the legend names them (only those drawn get a legend entry)."""
    lora = points[~points["baseline"]]
    kinds = {s for s in lora["status"] if s in ("finished", "errored")}
    kinds |= {"stopped"} if (~lora["status"].isin(["finished", "errored"])).any() else set()
    return kinds | set(points.loc[points["baseline"], "method"])


def _legend_handles(
    colors: dict[str, str], several: bool, models: dict[str, str], base: str = "base model",
    kinds: frozenset[str] | set[str] = frozenset(KINDS),
) -> list:
    gray = "0.35"
    handles = [
        Line2D([], [], ls="", marker="o", color=gray, label="finished"),
        Line2D([], [], ls="", marker="o", mfc="none", color=gray, label="stopped (ASHA)"),
        Line2D([], [], ls="", marker="X", color=ERRORED, label="errored"),
        Line2D([], [], ls="", marker="s", color=gray, mec="black", label=base),
        Line2D([], [], ls="", marker="D", color=gray, mec="black", label="full fine-tuning"),
    ]
    handles = [h for h, kind in zip(handles, KINDS) if kind in kinds]
    handles += [
        Line2D([], [], ls="", marker="o", color=c, label=model_short(m)) for m, c in models.items()
    ]
    if several and models:
        handles += [
            Line2D([], [], color="0.3", lw=1.2, ls=DASHES[i % len(DASHES)], label=s)
            for i, s in enumerate(colors)
        ]
    elif several:
        handles += [Line2D([], [], color=c, lw=2, label=s) for s, c in colors.items()]
    return handles


@_styled
def pareto_figure(info: ParetoInfo) -> Figure:
    """Quality against one resource: trials, each study's front as a step line, labels."""
    fig = _new_figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    colors = study_colors(info.fronts)
    several = len(info.fronts) > 1
    # several models: a colour per model (the models' palette), a gray front line per study
    models = study_colors(info.models) if len(info.models) > 1 else {}
    for i, (study, color) in enumerate(colors.items()):
        _scatter(ax, info.points[info.points["study"] == study], color, models)
        xs, ys = info.steps[study]
        if len(xs):
            line = dict(color="0.3", ls=DASHES[i % len(DASHES)]) if models else dict(color=color)
            ax.step(xs, ys, where=info.where, lw=1.2, alpha=0.8, zorder=2, **line)
        front = info.fronts[study]
        for _, r in front.iterrows():
            text = f"{r['study']}: {r['label']}" if several else r["label"]
            ax.annotate(
                text, (r["x"], r["y"]), xytext=(4, 5), textcoords="offset points", fontsize=7
            )
            if np.isfinite(r["test"]):  # held-out quality of the chosen configs
                mark = models.get(r["model"], "0.5") if models else color
                ax.plot([r["x"]] * 2, [r["y"], r["test"]], color=mark, lw=0.6, ls=":")
                ax.scatter([r["x"]], [r["test"]], marker="_", s=60, color=mark, zorder=3)
    if info.log_x:
        # symlog: the base model has 0 trainable parameters and must stay visible
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(axis_label(info.x) + (", log scale" if info.log_x else ""))
    ax.set_ylabel(info.y + (" (higher is better)" if info.larger_y_better else ""))
    # a classify study's base has a random head: the legend must not call it the base model
    untrained = any(UNTRAINED_BASE in str(text) for text in info.points["label"])
    base = UNTRAINED_BASE if untrained else "base model"
    handles = _legend_handles(colors, several, models, base, _kinds(info.points))
    if any(np.isfinite(f["test"]).any() for f in info.fronts.values()):
        handles.append(Line2D([], [], ls=":", marker="_", color="0.35", label="front's test value"))
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)
    plural = "s" if info.missing > 1 else ""
    note = f"; {info.missing} trial{plural} without these metrics" if info.missing else ""
    ax.set_title(f"{info.y} vs {info.x}\nline: front of finished trials{note}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@_styled
def effects_figure(panels: list[list[tuple]]) -> Figure:
    """Rows (one per metric) of factor panels ``(factor, metric, levels, points)`` from
    ``analysis.stats.level_means``: every run (points) and each level's mean with its 95%
    t-interval (bar; none with a single run)."""
    n_rows, n_cols = len(panels), max(len(row) for row in panels)
    fig = _new_figure(figsize=(2.6 * n_cols, 2.6 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey="row")
    for r, row in enumerate(panels):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(row):
                ax.set_visible(False)
                continue
            factor, metric, levels, points = row[c]
            rng = np.random.default_rng(0)  # fixed jitter: the same report twice is identical
            jitter = rng.uniform(-0.15, 0.15, len(points))
            ax.scatter(points["level"] + jitter, points["y"], s=12, color="#1f77b4", alpha=0.45)
            x = np.arange(len(levels))
            low = (levels["mean"] - levels["ci_low"]).fillna(0).clip(lower=0)
            high = (levels["ci_high"] - levels["mean"]).fillna(0).clip(lower=0)
            ax.errorbar(x, levels["mean"], yerr=[low, high], fmt="o-", color="black", ms=4,
                        capsize=4, lw=1)
            ax.set_xticks(x, [M.number(v) for v in levels["level"]], rotation=30, fontsize=7)
            ax.set_xlim(-0.5, max(len(levels), 1) - 0.5)
            ax.set_xlabel(factor)
            if c == 0:
                ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    # wrapped to the figure's width: a narrow figure (one or two factors) cut a one-line title
    title = ("Factor effects: every finished run (points), mean per level with its 95% "
             "t-interval (black)")
    fig.suptitle(textwrap.fill(title, width=max(30, int(15 * 2.6 * n_cols))), fontsize=9)
    fig.tight_layout()
    return fig


@_styled
def curves_figure(info: CurvesInfo) -> Figure:
    """Learning curves coloured by a factor; X marks where ASHA stopped a trial."""
    fig = _new_figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    factor_levels = [lv for lv in info.levels if lv not in BASELINE_LEVELS]
    colors = {
        lv: cmap(i / max(1, len(factor_levels) - 1) * 0.9) for i, lv in enumerate(factor_levels)
    }
    colors.update({"full": "black", "base": "0.5", BASELINE_LEVELS[-1]: "0.5"})
    for line in info.lines:
        style = "--" if line.level in BASELINE_LEVELS else "-"
        ax.plot(line.steps, line.values, style, color=colors[line.level], lw=1.1, alpha=0.85)
        if len(line.steps) == 1 and line.status != "stopped":  # e.g. the base model: one eval
            ax.scatter(line.steps, line.values, marker="s", color=colors[line.level], zorder=3)
        if line.status == "errored":
            ax.scatter(line.steps[-1:], line.values[-1:], marker="x", color=ERRORED, zorder=3)
    if len(info.stops):
        ax.scatter(
            info.stops["step"],
            info.stops["value"],
            marker="X",
            s=55,
            c=[colors[lv] for lv in info.stops["level"]],
            edgecolors="black",
            zorder=4,
        )
    handles = [
        Line2D([], [], color=colors[lv], label=f"{info.factor} {lv}") for lv in factor_levels
    ]
    handles += [
        Line2D([], [], color=colors[lv], ls="--", label=lv)
        for lv in BASELINE_LEVELS
        if lv in info.levels
    ]
    handles.append(
        Line2D([], [], ls="", marker="X", color="0.6", mec="black", label="stopped by ASHA")
    )
    ax.legend(handles=handles, fontsize=7)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(info.metric)
    ax.set_title(f"Learning curves coloured by {info.factor}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@_styled
def seeds_figure(info: SeedsInfo) -> Figure:
    """Full fine-tuning vs LoRA variants: one horizontal bar panel per metric."""
    n = len(info.metrics)
    height = 1.2 + 0.28 * max(1, len(info.labels))
    fig = _new_figure(figsize=(2.3 * n + 1.6, height))
    axes = fig.subplots(1, n, sharey=True, squeeze=False)
    y = np.arange(len(info.labels))
    colors = ["#444444" if m == "full" else "#1f77b4" for m in info.methods]
    for ax, metric in zip(axes[0], info.metrics):
        values = info.values[metric]
        if metric in M.QUALITY:  # a dot plot: bars from 0 would hide quality differences
            ax.scatter(values, y, c=colors, s=30, zorder=3)
        else:
            ax.barh(y, np.nan_to_num(values, nan=0.0), color=colors)
        for yi, v in zip(y, values):
            if np.isfinite(v):
                ax.annotate(
                    f"{v:.3g}",
                    (v, yi),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=6,
                )
        if metric == "trainable_params" and np.nanmin(values, initial=np.inf) > 0:
            ax.set_xscale("log")
        ax.set_title(axis_label(metric), fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(y, info.labels, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle("LoRA variants (blue) vs full fine-tuning (grey): cost and quality", fontsize=9)
    fig.tight_layout()
    return fig


@_styled
def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg; return both paths."""
    paths = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=110, metadata={"Date": None} if ext == "svg" else None)
        paths.append(path)
    return paths
