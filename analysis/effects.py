"""What each factor explains: Optuna's parameter importances and a main-effects OLS with ANOVA.

    importance(design, optuna_study=None)    # fANOVA and PED-ANOVA per quality metric
    anova(design, interactions=[("rank", "targets")])   # type-II ANOVA per metric

Both are Optuna's and statsmodels' own code on the design's runs; this module only builds their
input. Importances of a study come from its Optuna storage (one trial per configuration, its
value the mean over the replicates); for an external table, from an in-memory Optuna study with
one trial per configuration (the mean of its runs), every factor a categorical parameter.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.design import Design, _plain
from analysis.trial_row import CONFIG_COLUMNS

IMPORTANCE_COLUMNS = ["evaluator", "metric", "factor", "importance"]
ANOVA_COLUMNS = ["metric", "term", "sum_sq", "df", "F", "p"]
COLUMN_OF = {".".join(path): column for column, path in CONFIG_COLUMNS.items()}  # lora.rank: rank


def _table_study(design: Design, metric: str):
    """An in-memory Optuna study: one COMPLETE trial per configuration, params its factors'
    levels (missing: None), value the mean of ``metric`` over its runs."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    factors = [f for f in design.factors if len(design.orders.get(f, [])) > 1]
    choices = {f: [_plain(v) for v in design.orders[f]] for f in factors}
    runs = design.runs.dropna(subset=[metric])
    study = optuna.create_study(direction="maximize" if design.metrics[metric] else "minimize")
    for _, group in runs.groupby("config", sort=False):
        first = group.iloc[0]
        params = {f: _plain(first[f]) for f in factors}
        dists = {}
        for f in factors:
            if params[f] is None or params[f] not in choices[f]:
                params[f] = None
                dists[f] = CategoricalDistribution([*choices[f], None])
            else:
                dists[f] = CategoricalDistribution(choices[f])
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=float(group[metric].mean())))
    return study, factors


def _evaluators():
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    return {"fanova": FanovaImportanceEvaluator(seed=0), "ped_anova": PedAnovaImportanceEvaluator()}


def importance(design: Design, optuna_study=None, objectives: list[str] | None = None):
    """(table, notes): each evaluator's normalised importance of each factor for each quality
    metric, and one line per importance that could not be computed (too few trials, ...).

    With ``optuna_study`` (a study's own storage) the importances are of its ``objectives``
    (the study's values, in order) over its searched parameters; otherwise of every quality
    metric of the design, over its factors.
    """
    from optuna.importance import get_param_importances

    rows, notes = [], []
    jobs = []
    if optuna_study is not None:
        for i, metric in enumerate(objectives or []):
            sign = -1.0 if design.metrics.get(metric, False) else 1.0  # PED-ANOVA: lower is better
            jobs.append((metric, optuna_study, None, i, sign))
    else:
        for metric in design.quality:
            study, factors = _table_study(design, metric)
            jobs.append((metric, study, factors, None, -1.0 if design.quality[metric] else 1.0))
    for metric, study, params, index, sign in jobs:
        for name, evaluator in _evaluators().items():
            def target(trial, i=index, s=sign):
                return s * (trial.values[i] if i is not None else trial.value)

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = get_param_importances(study, evaluator=evaluator, params=params,
                                                  target=target)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                notes.append(f"{name} importance of {metric}: not computed ({err})")
                continue
            rows += [[name, metric, COLUMN_OF.get(param, param.rsplit(".", 1)[-1]), float(value)]
                     for param, value in found.items()]
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS), notes


def _term(name: str) -> str:
    return f'C(Q("{name}"))'


def anova(design: Design, interactions: list[tuple[str, ...]] = ()) -> tuple[pd.DataFrame, list]:
    """(table, notes): for each metric, OLS on the factors as categorical (missing values a level
    of their own) plus ``interactions``, and its type-II ANOVA (statsmodels' ``anova_lm``).

    A factor with one level among the runs that have the metric is left out, and so is an
    interaction naming it; a metric with no residual degrees of freedom gets a note instead.
    """
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    rows, notes, no_df = [], [], []
    for metric in design.metrics:
        data = design.runs.dropna(subset=[metric]).copy()
        for f in design.factors:  # a missing value is a level of its own ("not applicable")
            data[f] = data[f].astype(object).where(data[f].notna(), "n/a").map(str)
        factors = [f for f in design.factors if data[f].nunique() > 1]
        if not factors:
            continue
        terms = [_term(f) for f in factors]
        terms += [":".join(_term(f) for f in names) for names in interactions
                  if all(f in factors for f in names)]
        formula = f'Q("{metric}") ~ ' + " + ".join(terms)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = ols(formula, data=data).fit()
            if fit.df_resid < 1:
                no_df.append(f"{metric} ({len(data)} runs, {int(fit.df_model) + 1} parameters)")
                continue
            table = sm.stats.anova_lm(fit, typ=2)
        if any("rank-deficient" in str(w.message) for w in caught):
            notes.append(f"ANOVA of {metric}: some factors are confounded (the design matrix is "
                         "rank-deficient), so their sums of squares are not separable")
        for term, r in table.iterrows():
            name = term.replace('C(Q("', "").replace('"))', "")
            rows.append([metric, name, r["sum_sq"], r["df"], r["F"], r["PR(>F)"]])
    if no_df:
        notes.append(f"ANOVA skipped for {len(no_df)} metrics without residual degrees of freedom "
                     f"(replicates would give some): {', '.join(no_df[:3])}"
                     + (", ..." if len(no_df) > 3 else ""))
    frame = pd.DataFrame(rows, columns=ANOVA_COLUMNS)
    frame[["F", "p"]] = frame[["F", "p"]].astype(float).replace([np.inf, -np.inf], np.nan)
    return frame, notes
