"""The recommendation table: which configuration to pick for each priority (and data size).

For the design's leading quality metric ``q`` and its resources (the first is the memory axis),
over the configurations' means (``analysis.stats.configurations``):

- ``best q``: the best mean;
- ``best q with R0 <= B``: the best mean among configurations whose mean R0 is at most B, for
  :data:`BUDGETS` budgets evenly spaced from the smallest to the largest measured R0;
- ``least R within 1% of the best q``: for each resource R (memory too), the configuration with
  the least mean R among those whose mean q is within 1% (relative) of the best.

A baseline (``Design.baselines``: an untrained model costs no training time and the least
memory) is never the pick of a budget or resource row, and the budgets span the other
configurations only. With a data-size factor, each size gets its own rows. :func:`picks` has
one row per priority; :func:`recommendations` merges the rows of one data size that pick the
same configuration into one, listing the priorities it wins. Each row has the configuration,
its quality with its 95% t-interval (n replicates), its resources and the command that re-runs
it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.design import Design
from analysis.stats import configurations

BUDGETS = 4
TOLERANCE = 0.01
JOIN = "; "  # between the priorities a merged row wins


def _wide(design: Design) -> pd.DataFrame:
    """One row per configuration: its label, command, data size, n, and each metric's mean and
    interval (``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high``)."""
    long = configurations(design)
    first = design.runs.groupby("config", sort=False).first()
    wide = pd.DataFrame(index=first.index)
    wide["label"], wide["command"] = first["label"], first["command"]
    wide["data_size"] = first[design.data_size] if design.data_size else None
    wide["baseline"] = design.is_baseline(first)
    for metric, part in long.groupby("metric", sort=False):
        part = part.set_index("config")
        wide[metric] = part["mean"]
        wide[f"{metric}_ci_low"], wide[f"{metric}_ci_high"] = part["ci_low"], part["ci_high"]
        wide[f"{metric}_n"] = part["n"]
    return wide


def _up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits (a budget never prints below the
    configuration it admits)."""
    if value <= 0 or not np.isfinite(value):
        return float(value)
    scale = 10.0 ** (digits - 1 - int(np.floor(np.log10(value))))
    return float(np.ceil(value * scale - 1e-9) / scale)


def _pick(pool: pd.DataFrame, column: str, larger: bool):
    pool = pool.dropna(subset=[column])
    if not len(pool):
        return None
    return pool[column].idxmax() if larger else pool[column].idxmin()


def _rows(wide: pd.DataFrame, design: Design, quality: str) -> list[tuple[str, str]]:
    """(priority, chosen config) for one data size's configurations."""
    larger = design.quality[quality]
    rated = wide.dropna(subset=[quality])
    out = []
    best = _pick(rated, quality, larger)
    if best is None:
        return out
    out.append((f"best {quality}", best))
    trained = rated[~rated["baseline"].astype(bool)]  # a baseline wins no resource priority
    resources = [r for r in design.budget_resources
                 if r in trained.columns and trained[r].notna().any()]
    if resources:
        axis = resources[0]
        measured = trained[axis].dropna()
        for budget in np.linspace(measured.min(), measured.max(), BUDGETS):
            budget = _up(budget)  # the budget as printed is the rule applied
            pick = _pick(trained[trained[axis] <= budget], quality, larger)
            if pick is not None:
                out.append((f"best {quality} with {axis} <= {budget:g}", pick))
    top = rated.loc[best, quality]
    slack = TOLERANCE * abs(top)
    near = (trained[trained[quality] >= top - slack] if larger
            else trained[trained[quality] <= top + slack])
    for resource in resources:
        pick = _pick(near, resource, design.resources[resource])
        if pick is not None:
            word = "most" if design.resources[resource] else "least"
            out.append((f"{word} {resource} within 1% of the best {quality}", pick))
    return out


def picks(design: Design) -> pd.DataFrame:
    """One row per priority (see module): ``priority``, ``data_size``, ``config``,
    ``configuration``, ``n``, the quality metric with ``ci_low`` / ``ci_high``, each resource's
    mean, ``command``."""
    if not design.quality or not len(design.runs):
        return pd.DataFrame(columns=["priority", "config", "configuration", "n", "command"])
    quality = next(iter(design.quality))
    wide = _wide(design)
    sizes = (sorted(wide["data_size"].dropna().unique()) if design.data_size else [None])
    resources = [r for r in design.budget_resources if r in wide.columns]
    rows = []
    for size in sizes:
        part = wide if size is None else wide[wide["data_size"] == size]
        for priority, config in _rows(part, design, quality):
            r = part.loc[config]
            rows.append({
                "priority": priority,
                "data_size": size,
                "config": config,
                "configuration": r["label"],
                "n": int(r[f"{quality}_n"]),
                quality: r[quality],
                "ci_low": r[f"{quality}_ci_low"],
                "ci_high": r[f"{quality}_ci_high"],
                **{m: r[m] for m in resources},
                "command": r["command"] if r["command"] else "-",
            })
    table = pd.DataFrame(rows)
    if not design.data_size:
        table = table.drop(columns="data_size")
    return table


def recommendations(design: Design) -> pd.DataFrame:
    """:func:`picks` with the rows of one data size that pick the same configuration merged into
    one, its ``priority`` the priorities it wins joined by "; " (in their order)."""
    table = picks(design)
    if not len(table):
        return table.drop(columns="config")
    keys = ["data_size", "config"] if "data_size" in table.columns else ["config"]
    merged = table.groupby(keys, sort=False, as_index=False).first()
    merged["priority"] = table.groupby(keys, sort=False)["priority"].agg(JOIN.join).to_numpy()
    return merged[[c for c in table.columns if c != "config"]]
