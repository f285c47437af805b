"""What each figure shows, computed from the trial table (drawn by :mod:`analysis.render`).

    info = pareto_info(data.trials, x="peak_mem_mb", y="eval_loss")
    info.fronts["demo"][["x", "y", "label"]]       # the front, sorted by x
    fig = render.pareto_figure(info)

As in Optuna's visualization code, every figure is split in two: a ``*_info`` function that
returns a NamedTuple of plain arrays and tables (tested directly), and a render function that
only draws it. Nothing here imports matplotlib.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.selection import (
    UNTRAINED_BASE,
    check_metric,
    front_flags,
    is_untrained_base,
    label,
    maximize,
    model_short,
    present,
    several_models,
)
from study import metrics as M

# eval-split quality; a study shows those it has (see selection.present)
FRONT_QUALITY = (M.EVAL_LOSS, M.EXACT_MATCH, *M.CLASSIFY_EVAL, M.REWARD_ACCURACY)
# the resources every study's trials measure (a report draws each of them against quality)
FRONT_RESOURCES = (
    M.PEAK_MEM_MB,
    M.TRAIN_S,
    M.TRAINABLE_PARAMS,
    M.LATENCY_UNMERGED,
    M.LATENCY_MERGED,
    M.ADAPTER_MB,
)
# a classify trial's latency is per example (one forward, no decoding) instead of per token
EXAMPLE_LATENCIES = (M.LATENCY_EXAMPLE_UNMERGED, M.LATENCY_EXAMPLE_MERGED)
LOG_AXES = frozenset({M.TRAINABLE_PARAMS})
FACTORS = ("rank", "alpha", "targets", "bits", "scheme", "data_size", "model", "beta",
           "dpo_loss_type", "sft_weight")
# factors shown only where they vary: one model, or a scheme that only repeats bits, says
# nothing; DPO's beta, loss and SFT weight exist in preference studies only
DPO_FACTORS = ("beta", "dpo_loss_type", "sft_weight")
SOMETIMES = ("scheme", "model", *DPO_FACTORS)
TARGET_ORDER = ("qv", "qkv", "qkvo", "attention", "mlp", "all-linear")
SCHEME_ORDER = ("16", "8", "nf4", "fp4")
BASELINE_LEVELS = ("full", "base", UNTRAINED_BASE)  # curves' levels of the baselines


def front_resources(trials: pd.DataFrame) -> list[str]:
    """The resource axes for the trials' Pareto figures: :data:`FRONT_RESOURCES`, and the
    per-example latencies where some trial measured them (classify)."""
    return [*FRONT_RESOURCES, *present(trials, EXAMPLE_LATENCIES)]


def shown_factors(trials: pd.DataFrame) -> list[str]:
    """The factors worth a panel: every one of :data:`FACTORS` except ``model`` with a single
    model and ``scheme`` when it has no more levels than ``bits`` (no nf4 against fp4)."""
    def levels(column: str) -> int:
        return trials[column].dropna().nunique() if column in trials.columns else 0

    shown = [f for f in FACTORS if f not in SOMETIMES]
    if levels("scheme") > levels("bits"):
        shown.insert(shown.index("bits") + 1, "scheme")
    shown += [f for f in ("model", *DPO_FACTORS) if levels(f) > 1]
    return shown


class ParetoInfo(NamedTuple):
    """Quality ``y`` against resource ``x``: every trial, and each study's front."""

    x: str
    y: str
    log_x: bool
    points: pd.DataFrame  # study, trial, method, baseline, status, model, label, x, y, on_front
    fronts: dict[str, pd.DataFrame]  # study -> front rows sorted by x: x, y, label, test
    steps: dict[str, tuple[np.ndarray, np.ndarray]]  # study -> the front's step line (x, y)
    where: str  # matplotlib step mode that draws the dominated region's boundary
    missing: int  # trials without x or y (e.g. errored before the first evaluation)
    # the models drawn apart (a colour each), sorted; [] when the points are of one model
    models: list[str] = []
    larger_y_better: bool = False


def _step_line(front: pd.DataFrame, x_max: bool, right: float) -> tuple[np.ndarray, np.ndarray]:
    """The attainment boundary: best y reachable at each x, drawn through the front points."""
    xs, ys = front["x"].to_numpy(float), front["y"].to_numpy(float)
    if not len(xs):
        return xs, ys
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if x_max:  # larger x is better: the line runs in from the left edge
        return np.r_[min(right, xs[0]), xs], np.r_[ys[0], ys]
    return np.r_[xs, max(right, xs[-1])], np.r_[ys, ys[-1]]


# what a row of an external table (analysis.table_input) lacks: a finished LoRA run of one model
RUN_DEFAULTS = {"method": "lora", "baseline": False, "status": "finished", "model": None}


def _points(rows: pd.DataFrame, x: str, y: str, on_front: pd.Series) -> pd.DataFrame:
    """One row per drawn trial; its label is the table's ``label`` where it has one."""
    # a front may mix models (which model and config is cheapest for this quality): each
    # point says its model, in its label and its colour
    by_model = several_models(rows)
    labels = (rows["label"] if "label" in rows.columns
              else [label(r, by_model) for _, r in rows.iterrows()])
    test = M.TEST_OF.get(y)
    return pd.DataFrame(
        {
            "study": rows["study"],
            "trial": rows["trial"],
            "method": rows["method"],
            "baseline": rows["baseline"].astype(bool),
            "status": rows["status"],
            "model": rows["model"],
            "label": list(labels),
            "x": rows[x].astype(float),
            "y": rows[y].astype(float),
            "on_front": on_front.astype(bool),
            "test": rows[test].astype(float) if test in rows.columns else np.nan,
        }
    ).reset_index(drop=True)


def pareto_info(
    trials: pd.DataFrame, x: str, y: str, include_stopped: bool = False,
    larger_better: tuple[bool, bool] | None = None,
) -> ParetoInfo:
    """Points and fronts of ``y`` against ``x``; fronts from finished trials unless asked.

    ``trials``: a study's trial table (analysis.load), or an external table's runs
    (analysis.table_input: no method or status columns, metrics of its own) with
    ``larger_better`` = whether a larger (x, y) is better. Every Pareto panel of both reports
    is drawn from this value (render.pareto_figure)."""
    if larger_better is None:
        check_metric(trials, x)
        check_metric(trials, y)
        larger_better = (maximize(x), maximize(y))
    x_max, y_max = larger_better
    trials = trials.assign(**{c: v for c, v in RUN_DEFAULTS.items() if c not in trials.columns})
    has = trials[x].notna() & trials[y].notna()
    rows = trials[has]
    points = _points(rows, x, y, front_flags(rows, [y, x], include_stopped,
                                             larger_better=[y_max, x_max]))
    fronts, steps = {}, {}
    edge = (points["x"].min() if x_max else points["x"].max()) if len(points) else 0.0
    for study in trials["study"].unique():
        front = points[(points["study"] == study) & points["on_front"]]
        front = front.sort_values(["x", "y"], ascending=[True, not y_max], kind="stable")
        fronts[study] = front.reset_index(drop=True)
        steps[study] = _step_line(front, x_max, edge)
    models = points["model"].dropna().unique().tolist()
    return ParetoInfo(
        x=x,
        y=y,
        log_x=x in LOG_AXES,
        points=points,
        fronts=fronts,
        steps=steps,
        where="pre" if x_max else "post",
        missing=int((~has).sum()),
        models=sorted(models) if len(models) > 1 else [],
        larger_y_better=y_max,
    )


def _level_order(values: list) -> list:
    """Numbers ascending; target shorthands in order of size, quant schemes from 16 bits down,
    then other names alphabetically."""
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return sorted(values)
    order = (*TARGET_ORDER, *SCHEME_ORDER)
    known = [t for t in order if t in values]
    return known + sorted(str(v) for v in values if v not in order)


def _level_text(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def factor_table(trials: pd.DataFrame, factor: str, metrics: list[str]) -> pd.DataFrame:
    """The numbers behind a factor's panels: per study and level, the finished LoRA trials and
    each metric's median and best over them (columns ``trials``, ``median <m>``, ``best <m>``)."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; use one of {', '.join(FACTORS)}")
    for metric in metrics:
        check_metric(trials, metric)
    rows = trials[
        (trials["status"] == "finished") & (trials["method"] == "lora") & trials[factor].notna()
    ]
    raw = [v.item() if hasattr(v, "item") else v for v in rows[factor]]
    order = {v: i for i, v in enumerate(_level_order(list(dict.fromkeys(raw))))}
    text = model_short if factor == "model" else _level_text
    entries = []
    for study in trials["study"].unique():
        for level in order:
            match = np.array([v == level for v in raw], dtype=bool)
            part = rows[(rows["study"] == study).to_numpy() & match]
            if not len(part):
                continue
            entry = {"study": study, factor: text(level), "trials": len(part)}
            for m in metrics:
                values = part[m].dropna()
                best = (values.max() if maximize(m) else values.min()) if len(values) else np.nan
                entry[f"median {m}"] = values.median() if len(values) else np.nan
                entry[f"best {m}"] = best
            entries.append(entry)
    stats = (f"{s} {m}" for m in metrics for s in ("median", "best"))
    columns = ["study", factor, "trials", *stats]
    return pd.DataFrame(entries, columns=columns)


class CurveLine(NamedTuple):
    """One trial's learning curve."""

    study: str
    trial: str
    level: str  # the colouring factor's level ("full" / "base" for baselines)
    status: str
    steps: np.ndarray
    values: np.ndarray


class CurvesInfo(NamedTuple):
    """Learning curves of ``metric`` coloured by ``factor``; stopped trials end in a marker."""

    metric: str
    factor: str
    levels: list[str]  # colour order
    lines: list[CurveLine]
    stops: pd.DataFrame  # study, trial, level, step, value: where ASHA stopped a trial


def curves_info(
    trials: pd.DataFrame, curves: pd.DataFrame, factor: str = "rank", metric: str = M.EVAL_LOSS
) -> CurvesInfo:
    """Every trial's curve of ``metric`` against step, with its ``factor`` level and status."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; use one of {', '.join(FACTORS)}")
    if metric not in curves.columns:
        raise ValueError(f"curves have no {metric!r}; use one of {', '.join(curves.columns[3:])}")
    keyed = trials.set_index(["study", "group", "trial"])
    lines, stops, raw_levels = [], [], []
    for (study, group, trial), part in curves.groupby(["study", "group", "trial"], sort=False):
        if (study, group, trial) not in keyed.index:
            continue
        row = keyed.loc[(study, group, trial)]
        part = part[part[metric].notna()].sort_values(M.STEP)
        if not len(part):
            continue
        if row["method"] == "lora":
            value = row[factor]
        else:
            value = UNTRAINED_BASE if is_untrained_base(row) else row["method"]
        value = value.item() if hasattr(value, "item") else value
        raw_levels.append(value)
        line = CurveLine(
            study,
            trial,
            _level_text(value),
            row["status"],
            part[M.STEP].to_numpy(float),
            part[metric].to_numpy(float),
        )
        lines.append(line)
        if line.status == "stopped":
            stops.append((study, trial, line.level, line.steps[-1], line.values[-1]))
    numeric = [v for v in dict.fromkeys(raw_levels) if v not in BASELINE_LEVELS]
    others = [v for v in BASELINE_LEVELS if v in raw_levels]
    levels = [_level_text(v) for v in _level_order(numeric)] + others
    stops_frame = pd.DataFrame(stops, columns=["study", "trial", "level", "step", "value"])
    return CurvesInfo(metric, factor, levels, lines, stops_frame)


class SeedsInfo(NamedTuple):
    """LoRA variants against full fine-tuning: one bar per variant in each metric's panel."""

    labels: list[str]
    methods: list[str]  # "full" or "lora" per bar
    metrics: list[str]
    values: dict[str, np.ndarray]  # metric -> one value per bar (median over the variant)
    counts: np.ndarray  # trials per bar


SEEDS_METRICS = (M.TRAINABLE_PARAMS, M.STEP_MS, M.PEAK_MEM_MB)


def seeds_info(
    trials: pd.DataFrame, quality: str | None = None, limit: int = 12
) -> SeedsInfo:
    """The seeds' question: full fine-tuning vs LoRA (rank x targets x bits, median of trials).

    ``quality`` orders the variants; by default the first of :data:`FRONT_QUALITY` the trials
    have (eval_loss where measured). The other quality metrics they have get panels too.
    """
    quality = quality or next(iter(present(trials, FRONT_QUALITY)), M.EVAL_LOSS)
    check_metric(trials, quality)
    metrics = [*SEEDS_METRICS, quality]
    metrics += [m for m in present(trials, FRONT_QUALITY) if m not in metrics]
    rows = trials[trials["status"].eq("finished") & trials["method"].isin(["lora", "full"])].copy()
    several = trials["study"].nunique() > 1
    by_model = several_models(trials)  # the same variant of two models is two bars
    rows["variant"] = [
        (f"{r['study']}: " if several else "") + label(r, by_model) for _, r in rows.iterrows()
    ]
    grouped = rows.groupby("variant", sort=False)
    table = grouped[metrics].median()
    table["method"] = grouped["method"].first()
    table["count"] = grouped.size()
    full = table[table["method"] == "full"]
    lora = table[table["method"] == "lora"]
    # too many variants make unreadable bars: keep the best on quality, then order by size
    lora = lora.sort_values(quality, ascending=not maximize(quality)).head(limit - len(full))
    lora = lora.sort_values([M.TRAINABLE_PARAMS, quality], ascending=[True, not maximize(quality)])
    table = pd.concat([full, lora]) if len(full) and len(lora) else (full if len(full) else lora)
    return SeedsInfo(
        labels=list(table.index),
        methods=list(table["method"]),
        metrics=metrics,
        values={m: table[m].to_numpy(float) for m in metrics},
        counts=table["count"].to_numpy(int),
    )
