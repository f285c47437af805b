"""What a report's statistics read: the runs, their factors, their metrics and directions.

    design = from_trials(data.trials, data.studies)       # a study's finished LoRA trials
    design = from_table(frame, factors=["rank", "bits"],   # any tool's table, one row per run
                        quality={"acc": True}, resources={"mem_gb": False}, replicate="seed")

A :class:`Design` is the one contract between the places runs come from (study directories,
an external CSV) and the statistics (``analysis.stats``, ``analysis.effects``,
``analysis.recommend``): one row per run with a ``config`` (the runs that share a
configuration, its replicates), a ``replicate`` index (what pairs two configurations' runs) and
the factor and metric columns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.figure_data import SCHEME_ORDER, TARGET_ORDER
from analysis.selection import label, several_models, train_one_command
from analysis.trial_row import CONFIG_COLUMNS
from study import metrics as M

# a study's identity columns: what the searcher and the space may vary (seed is the replicate)
IDENTITY = ("model", "task", "rank", "alpha", "targets", "dropout", "variant", "init",
            "loraplus_ratio", "rslora", "bits", "quant_type", "scheme", "data_size", "lr", "steps")
# the resources a recommendation reads, in its order: the budget axis first
STUDY_ORDER = (*TARGET_ORDER, *SCHEME_ORDER)  # where the space gives no order
STUDY_RESOURCES = (M.PEAK_MEM_MB, M.TRAIN_S, M.ADAPTER_MB, M.LATENCY_MERGED,
                   M.LATENCY_EXAMPLE_MERGED)
# a factor's level where it does not apply to a run (a baseline has no rank), as printed
NOT_APPLICABLE = "not applicable"
# levels that name a run without training (a table's method "baseline", a study's "base"):
# a reference point, never the pick of a resource priority (a base model costs nothing)
BASELINE_LEVELS = ("base", "baseline", "untrained")


@dataclass(frozen=True)
class Design:
    """Runs and what they vary.

    Attributes:
        runs: one row per finished run: ``config``, ``replicate``, ``label`` (the configuration
            in words), ``command`` (what re-runs it, or None), the factor, matched and metric
            columns.
        factors: categorical factors, compared level against level in pairs.
        matched: other columns that vary (a continuous searched factor such as a log-uniform
            lr): never compared, matched only where equal.
        quality, resources: metric -> True when larger is better; the first quality metric is
            the one the answer leads with.
        orders: each factor's levels in order (the smaller level of a pair first).
        data_size: the factor that says how much data a run had (a recommendation per size).
        source: what the runs are ("study" or the table's file name).
        recommend: the resources of the recommendation table, the memory axis first (None:
            every resource).
        baselines: factor -> its levels that mark a run without training (see
            :data:`BASELINE_LEVELS`).
    """

    runs: pd.DataFrame
    factors: list[str]
    matched: list[str] = field(default_factory=list)
    quality: dict[str, bool] = field(default_factory=dict)
    resources: dict[str, bool] = field(default_factory=dict)
    orders: dict[str, list] = field(default_factory=dict)
    data_size: str | None = None
    source: str = "study"
    recommend: list[str] | None = None
    baselines: dict[str, list] = field(default_factory=dict)

    def is_baseline(self, runs: pd.DataFrame | None = None) -> pd.Series:
        """Per run (of ``runs``, the design's by default): whether it is a baseline."""
        runs = self.runs if runs is None else runs
        mask = pd.Series(False, index=runs.index)
        for factor, levels in self.baselines.items():
            mask |= runs[factor].isin(levels)
        return mask

    @property
    def budget_resources(self) -> list[str]:
        """The resources the recommendation table reads (the first is the memory axis)."""
        return [r for r in (self.recommend or self.resources) if r in self.resources]

    @property
    def metrics(self) -> dict[str, bool]:
        """Quality then resource metrics, with their directions."""
        return {**self.quality, **self.resources}


def level_order(values: list, space_order: list | None = None, known: tuple = ()) -> list:
    """Numbers ascending; otherwise the order of the search space, then ``known`` (a study's
    target shorthands by size, quantization schemes from 16 bits down), then the table's."""
    values = list(dict.fromkeys(whole_numbers(pd.Series(values, dtype=object)).dropna()))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    known = [v for v in (*(space_order or []), *known) if v in values]
    known = list(dict.fromkeys(known))
    return known + [v for v in values if v not in known]


def find_baselines(runs: pd.DataFrame, factors: list[str]) -> dict[str, list]:
    """factor -> its levels named as a baseline (:data:`BASELINE_LEVELS`, any case)."""
    found = {}
    for factor in factors:
        levels = [v for v in runs[factor].dropna().unique()
                  if isinstance(v, str) and v.strip().lower() in BASELINE_LEVELS]
        if levels:
            found[factor] = levels
    return found


def whole_numbers(series: pd.Series) -> pd.Series:
    """A factor's values with a whole number as an int (rank 32, not 32.0: a column with a
    missing value is read as floats), None where missing; other values as they are."""
    def one(value):
        if _missing(value):
            return None
        value = _plain(value)
        return int(value) if isinstance(value, float) and value.is_integer() else value

    # a list, not Series.map: map would infer floats again from ints and None
    return pd.Series([one(v) for v in series], index=series.index, dtype=object)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _plain(value):
    """A numpy scalar as a Python one (JSON, Optuna and the CSV want plain values)."""
    return value.item() if hasattr(value, "item") else value


def _dig(space: dict, path: tuple):
    for key in path:
        if not isinstance(space, dict) or key not in space:
            return None
        space = space[key]
    return space


def _study_columns(trials: pd.DataFrame, studies: dict) -> tuple[list, list, dict]:
    """The factors, the matched columns and the levels' space order of a study's runs."""
    varying = [c for c in IDENTITY if c in trials.columns
               and trials[c].astype(object).where(trials[c].notna(), None).nunique(dropna=False)
               > 1]
    # scheme (16, 8, nf4, fp4) says bits and quant type at once: the comparison users ask for
    if "scheme" in varying:
        varying = [c for c in varying if c not in ("bits", "quant_type")]
    varying = [c for i, c in enumerate(varying)
               if not any(_determines(trials, f, c) for f in varying[:i])]
    factors, matched, orders = [], [], {}
    for column in varying:
        path = CONFIG_COLUMNS[column]
        domains = [_dig(info.get("space", {}), path) for info in studies.values()]
        if any(isinstance(d, dict) and ({"uniform", "loguniform"} & d.keys()) for d in domains):
            matched.append(column)
            continue
        factors.append(column)
        choices = [c for d in domains if isinstance(d, dict) for c in d.get("choice", [])]
        orders[column] = level_order(trials[column].tolist(), choices, STUDY_ORDER)
    return factors, matched, orders


def _determines(trials: pd.DataFrame, f: str, c: str) -> bool:
    """Whether ``f``'s level says ``c``'s (alpha = 2 x rank by default): then ``c`` is no factor
    of its own, or no two levels of ``f`` could ever pair."""
    values = trials[[f, c]].astype(object).where(trials[[f, c]].notna(), "\0")
    return bool((values.groupby(f)[c].nunique() <= 1).all())


def _config_key(row: pd.Series, columns: list[str]) -> str:
    values = {c: None if _missing(row[c]) else _plain(row[c]) for c in columns}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def from_trials(trials: pd.DataFrame, studies: dict) -> Design:
    """The design of studies' finished searched LoRA trials (baselines are not in it).

    Runs of one configuration and replicate in several pooled studies are averaged into one.
    """
    runs = trials[(trials["group"] == "search") & (trials["status"] == "finished")
                  & (trials["method"] == "lora")].copy()
    factors, matched, orders = _study_columns(runs, studies)
    identity = [c for c in IDENTITY if c in runs.columns]
    if "config_id" in runs.columns and runs["config_id"].notna().all():
        runs["config"] = runs["config_id"]
    else:  # results from before config_id was recorded
        runs["config"] = [_config_key(r, identity) for _, r in runs.iterrows()]
    runs["replicate"] = pd.to_numeric(runs.get("replicate"), errors="coerce").fillna(0)
    by_model = several_models(runs)
    runs["label"] = [label(r, by_model, detail=True) for _, r in runs.iterrows()]
    runs["command"] = [train_one_command(r) for _, r in runs.iterrows()]
    objectives = [o for info in studies.values() for o in info.get("objectives", [])]
    quality = [m for m in dict.fromkeys([*objectives, *M.QUALITY])
               if m in M.QUALITY and m in runs.columns and runs[m].notna().any()]
    resources = [m for m in dict.fromkeys([*STUDY_RESOURCES, *M.RESOURCES])
                 if m in runs.columns and runs[m].notna().any()]
    metrics = quality + resources
    runs[metrics] = runs[metrics].apply(pd.to_numeric, errors="coerce")
    keep = ["config", "replicate", *factors, *matched, "label", "command", "study", "trial"]
    if runs.duplicated(["config", "replicate"]).any():
        first = runs.groupby(["config", "replicate"], sort=False)[keep[2:]].first()
        means = runs.groupby(["config", "replicate"], sort=False)[metrics].mean()
        runs = first.join(means).reset_index()
    runs = runs[[c for c in dict.fromkeys([*keep, *metrics]) if c in runs.columns]]
    runs = runs.assign(**{f: whole_numbers(runs[f]) for f in factors})  # rank 32, not 32.0
    return Design(
        runs=runs.reset_index(drop=True),
        factors=factors,
        matched=matched,
        quality={m: M.mode(m) == "max" for m in quality},
        resources={m: M.mode(m) == "max" for m in resources},
        orders=orders,
        data_size="data_size" if "data_size" in factors else None,
        source="study",
        recommend=[r for r in STUDY_RESOURCES if r in resources],
    )
