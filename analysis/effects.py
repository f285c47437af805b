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

from analysis.applicable import applicable
from analysis.design import NOT_APPLICABLE, Design, _missing, _plain
from analysis.trial_row import CONFIG_COLUMNS

IMPORTANCE_COLUMNS = ["evaluator", "metric", "factor", "importance"]
EVALUATOR_NAMES = {"fanova": "fANOVA", "ped_anova": "PED-ANOVA"}
ANOVA_COLUMNS = ["metric", "term", "sum_sq", "df", "F", "p"]
COLUMN_OF = {".".join(path): column for column, path in CONFIG_COLUMNS.items()}  # lora.rank: rank


def _table_study(design: Design, runs: pd.DataFrame, metric: str):
    """An in-memory Optuna study: one COMPLETE trial per configuration of ``runs``, params its
    factors' levels, value the mean of ``metric`` over its runs. A missing level is the category
    "not applicable" of every trial's distribution: a search space that changed from trial to
    trial is one Optuna refuses."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = runs.dropna(subset=[metric])
    values = {f: runs[f].map(lambda v: NOT_APPLICABLE if _missing(v) else _plain(v))
              for f in design.factors}
    factors = [f for f in design.factors if values[f].nunique() > 1]
    choices = {}
    for f in factors:
        present = set(values[f])
        choices[f] = [_plain(v) for v in design.orders.get(f, []) if _plain(v) in present]
        choices[f] += [v for v in dict.fromkeys(values[f]) if v not in choices[f]]
    dists = {f: CategoricalDistribution(choices[f]) for f in factors}
    study = optuna.create_study(direction="maximize" if design.metrics[metric] else "minimize")
    for _, group in runs.groupby("config", sort=False):
        params = {f: values[f][group.index[0]] for f in factors}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=float(group[metric].mean())))
    return study, factors


def _evaluators():
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    return {"fanova": FanovaImportanceEvaluator(seed=0), "ped_anova": PedAnovaImportanceEvaluator()}


def _not_computed(name: str, metric: str, trials: int) -> str:
    """Why an importance is missing, in the report's words (never the library's message)."""
    why = (f"it needs 2 or more configurations with a value, and there are {trials}" if trials < 2
           else f"its {trials} configurations are too few or too alike for it to tell the "
           "factors apart")
    return f"{EVALUATOR_NAMES[name]} importance of {metric}: not computed: {why}."


def _conditional_params(study) -> list[str]:
    """The parameters some of a study's finished trials lack (a conditional search space):
    Optuna reads only those every trial has."""
    from optuna.search_space import intersection_search_space
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    every = set(intersection_search_space(done)) if done else set()
    return sorted({p for t in done for p in t.distributions} - every)


def _jobs(design: Design, optuna_study, objectives, notes: list[str]) -> list[tuple]:
    """(metric, study, params, objective index, sign) per importance to compute."""
    jobs = []
    if optuna_study is not None:
        left = _conditional_params(optuna_study)
        if left:
            notes.append(f"Importance reads the parameters every trial has; left out: "
                         f"{', '.join(COLUMN_OF.get(p, p) for p in left)} (some configurations "
                         "only have them).")
        for i, metric in enumerate(objectives or []):
            sign = -1.0 if design.metrics.get(metric, False) else 1.0  # PED-ANOVA: lower is better
            jobs.append((metric, optuna_study, None, i, sign))
        return jobs
    runs, note = applicable(design, design.runs)
    if note:
        notes.append(note)
    for metric in design.quality:
        study, factors = _table_study(design, runs, metric)
        jobs.append((metric, study, factors, None, -1.0 if design.quality[metric] else 1.0))
    return jobs


def importance(design: Design, optuna_study=None, objectives: list[str] | None = None):
    """(table, notes): each evaluator's normalised importance of each factor for each quality
    metric, and one line per importance that could not be computed (too few trials, ...), in
    the report's words.

    With ``optuna_study`` (a study's own storage) the importances are of its ``objectives``
    (the study's values, in order) over the searched parameters every trial has; otherwise of
    every quality metric of the design, over its factors, on the runs where every factor
    applies (``analysis.applicable``).
    """
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    rows, notes = [], []
    for metric, study, params, index, sign in _jobs(design, optuna_study, objectives, notes):
        trials = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        for name, evaluator in _evaluators().items():
            def target(trial, i=index, s=sign):
                return s * (trial.values[i] if i is not None else trial.value)

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = get_param_importances(study, evaluator=evaluator, params=params,
                                                  target=target)
            except (ValueError, RuntimeError, ZeroDivisionError):  # Optuna's words stay off
                notes.append(_not_computed(name, metric, trials))
                continue
            rows += [[name, metric, COLUMN_OF.get(param, param.rsplit(".", 1)[-1]), float(value)]
                     for param, value in found.items()]
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS), notes


def _term(name: str) -> str:
    return f'C(Q("{name}"))'


def _name(term: str) -> str:
    return term.replace('C(Q("', "").replace('"))', "")


def _aliased(data: pd.DataFrame, metric: str, terms: list[str]) -> tuple[list[str], list[str]]:
    """(the terms kept, a line per term left out): each term in order joins the model only if
    its columns add to the rank of the design matrix; a term that does not is aliased with
    (is a combination of) the terms before it, which the null space of the matrix names."""
    from scipy.linalg import null_space
    from statsmodels.formula.api import ols

    kept, dropped, owner = [], [], {"Intercept": None}
    for term in terms:
        model = ols(f'Q("{metric}") ~ ' + " + ".join([*kept, term]), data=data)
        # a column of zeros is a combination of levels no run has (an interaction's empty
        # cell): no alias, and statsmodels' least squares leaves it out by itself
        used = np.abs(model.exog).max(axis=0) > 0
        names = [n for n, u in zip(model.exog_names, used) if u]
        x = model.exog[:, used]
        if np.linalg.matrix_rank(x) == x.shape[1]:
            kept.append(term)
            owner.update({n: term for n in names if n not in owner})
            continue
        weight = np.abs(null_space(x)).max(axis=1)
        partners = {owner[n] for n, w in zip(names, weight) if n in owner and w > 1e-8}
        with_ = " and ".join(_name(t) for t in kept if t in partners) or "the intercept"
        dropped.append(f"{_name(term)} (aliased with {with_})")
    return kept, dropped


def _terms(factors: list[str], interactions) -> list[str]:
    terms = [_term(f) for f in factors]
    return terms + [":".join(_term(f) for f in names) for names in interactions
                    if all(f in factors for f in names)]


def _anova_data(design: Design, runs: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list]:
    """The runs with ``metric``, each factor as text (missing: "not applicable"), and the
    factors with 2+ levels among them."""
    data = runs.dropna(subset=[metric]).copy()
    for f in design.factors:
        data[f] = data[f].astype(object).where(data[f].notna(), NOT_APPLICABLE).map(str)
    return data, [f for f in design.factors if data[f].nunique() > 1]


def anova(design: Design, interactions: list[tuple[str, ...]] = ()) -> tuple[pd.DataFrame, list]:
    """(table, notes): for each metric, OLS on the factors as categorical plus ``interactions``,
    and its type-II ANOVA (statsmodels' ``anova_lm``), on the runs where every factor applies
    (``analysis.applicable``; a note names what was left out).

    A factor with one level among the runs that have the metric is left out, and so is an
    interaction naming it; a term aliased with the terms before it is left out and named; a
    metric with no residual degrees of freedom gets a note instead.
    """
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    runs, note = applicable(design, design.runs)
    rows, notes, no_df, aliased = [], [], [], {}
    for metric in design.metrics:
        data, factors = _anova_data(design, runs, metric)
        if not factors:
            continue
        terms, dropped = _aliased(data, metric, _terms(factors, interactions))
        if dropped:
            aliased.setdefault("; ".join(dropped), []).append(metric)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ols(f'Q("{metric}") ~ ' + " + ".join(terms), data=data).fit()
            if fit.df_resid < 1:
                no_df.append(f"{metric} ({len(data)} runs, {int(fit.df_model) + 1} parameters)")
                continue
            table = sm.stats.anova_lm(fit, typ=2)
        for term, r in table.iterrows():
            rows.append([metric, _name(term), r["sum_sq"], r["df"], r["F"], r["PR(>F)"]])
    if no_df:
        notes.append(f"ANOVA skipped for {len(no_df)} metrics without residual degrees of freedom "
                     f"(replicates would give some): {', '.join(no_df[:3])}"
                     + (", ..." if len(no_df) > 3 else ""))
    notes[:0] = [f"ANOVA of {', '.join(metrics)}: left out {what}: its levels pick out the same "
                 "runs as those terms' levels, so its effect cannot be told apart from theirs."
                 for what, metrics in aliased.items()]
    if note and rows:
        notes.insert(0, note)
    frame = pd.DataFrame(rows, columns=ANOVA_COLUMNS)
    frame[["F", "p"]] = frame[["F", "p"]].astype(float).replace([np.inf, -np.inf], np.nan)
    return frame, notes
