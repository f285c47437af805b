"""Picking trials from the loaded table: labels, Pareto sets, the best trial under a budget.

    front = front_rows(trials, x="peak_mem_mb", y="eval_loss")   # finished trials by default
    pick = best_trial(trials, "exact_match", max_mem_mb=800)
    print(train_one_command(pick))

Fronts and "best" use finished trials only unless asked: a trial stopped by ASHA was given
less budget, so its metrics are not comparable with a finished one's.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pandas as pd

from analysis.pareto import hypervolume_2d, pareto_mask
from study import metrics as M
from study import record

PARETO_COLUMN = f"pareto_{M.EVAL_LOSS}_{M.PEAK_MEM_MB}"  # the flag every study has


def maximize(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better."""
    return M.mode(name) == "max"


def check_metric(trials: pd.DataFrame, name: str) -> None:
    """ValueError (one line) unless ``name`` is a metric column of the table."""
    known = [*M.QUALITY, *M.RESOURCES, *M.PROGRESS]
    if name not in known or name not in trials.columns:
        raise ValueError(f"unknown metric {name!r}; use one of {', '.join(known)}")


def present(trials: pd.DataFrame, names) -> list[str]:
    """The metric columns among ``names`` that some trial has a value of: a classify study has
    no exact_match and a skills study no accuracy, and neither gets an empty figure or column."""
    return [n for n in names if n in trials.columns and trials[n].notna().any()]


def classify_metric(study_info: dict) -> str:
    """The study's first classification objective (study.json's "objectives"), else accuracy:
    the metric a classify study's best trials are picked by."""
    objectives = study_info.get("objectives") if isinstance(study_info, dict) else None
    for name in objectives if isinstance(objectives, list) else []:
        if name in M.CLASSIFY_EVAL:
            return name
    return M.ACCURACY


def several_models(trials: pd.DataFrame) -> bool:
    """Whether the table holds trials of more than one model (then labels name the model)."""
    return "model" in trials.columns and trials["model"].dropna().nunique() > 1


def model_short(name) -> str:
    """A model's name as labels show it: the last part of a hub id or a path
    (``Qwen/Qwen2-0.5B`` -> ``Qwen2-0.5B``), "?" when unknown."""
    if name is None or (isinstance(name, float) and math.isnan(name)) or name is pd.NA:
        return "?"
    return str(name).rstrip("/").rsplit("/", 1)[-1] or str(name)


STORAGE = ("fp32", "bf16", "fp16", "int8", "nf4", "fp4")  # env.json's "weights"
# A classify study's base trial scores the body with a freshly initialised (random) score head:
# its accuracy is chance-like and says nothing of what the pretrained model knows.
UNTRAINED_BASE = "base (untrained head)"


def is_untrained_base(row: pd.Series | dict) -> bool:
    """Whether the trial is a classify study's base trial (its head was never trained)."""
    return row.get("method") == "base" and row.get("task") == "classify"


def label(row: pd.Series | dict, model: bool = False, detail: bool = False) -> str:
    """A trial's name in every table, figure and summary line.

    Short: ``r8 all-linear 4b nf4`` for LoRA (``dora pissa lora+16 rs r8 ...`` for a variant),
    ``full 16b fp32`` for baselines: the bits and, where the trial recorded it, what its base
    weights are stored as (on CUDA "16-bit" is bf16 or fp16, on CPU fp32). With ``detail``:
    ``lora r8 a16 all-linear 4b nf4, data 1000, lr 0.0002`` (alpha, data size and learning
    rate too). With ``model`` (a table of several models, see :func:`several_models`) the
    model's short name comes first."""
    bits = row.get("bits")
    suffix = "" if bits is None or pd.isna(bits) else f" {int(bits)}b"
    if suffix and row.get("weights") in STORAGE:
        suffix += f" {row.get('weights')}"
    elif suffix and row.get("scheme") in ("nf4", "fp4"):  # no env.json: the 4-bit scheme
        suffix += f" {row.get('scheme')}"
    prefix = f"{model_short(row.get('model'))} " if model else ""
    if row.get("method") != "lora":
        method = UNTRAINED_BASE if is_untrained_base(row) else row.get("method")
        what = f"{method}{suffix}"
    else:
        rank = row.get("rank")
        rank_text = "?" if rank is None or pd.isna(rank) else int(rank)
        alpha = row.get("alpha")
        alpha_text = "" if not detail or alpha is None or pd.isna(alpha) else f"a{alpha:g} "
        lora = "lora " if detail else ""
        what = f"{lora}{_variant_text(row)}r{rank_text} {alpha_text}{row.get('targets')}{suffix}"
    if not detail:
        return prefix + what
    lr = row.get("lr")
    lr_text = f", lr {lr:.2g}" if isinstance(lr, (int, float)) and not math.isnan(lr) else ""
    return f"{prefix}{what}, data {row.get('data_size')}{lr_text}"


def _variant_text(row: pd.Series | dict) -> str:
    """"dora pissa lora+16 rs " where a trial departs from plain LoRA ("" where it does not)."""
    parts = []
    for column, plain in (("variant", "lora"), ("init", "kaiming")):
        value = row.get(column)
        if isinstance(value, str) and value != plain:
            parts.append(value.rsplit(":", 1)[-1])  # a user's module:Class -> Class
    ratio = row.get("loraplus_ratio")
    if isinstance(ratio, (int, float)) and not pd.isna(ratio) and ratio != 1:
        parts.append(f"lora+{ratio:g}")
    if row.get("rslora") is True:
        parts.append("rs")
    return "".join(f"{p} " for p in parts)


def _candidates(trials: pd.DataFrame, include_stopped: bool) -> pd.Series:
    ok = ["finished", "stopped"] if include_stopped else ["finished"]
    return trials["status"].isin(ok)


def front_flags(
    trials: pd.DataFrame,
    objectives: list[str],
    include_stopped: bool = False,
    by_study: bool = True,
    larger_better: list[bool] | None = None,
) -> pd.Series:
    """Boolean Series: the trial is on the Pareto front of ``objectives``.

    Only finished trials (and stopped ones if ``include_stopped``) with every objective present
    are candidates; baselines are included, so a base model that is cheaper and as good shows.
    With ``by_study`` each study has its own front (how overlaid studies are compared);
    otherwise all studies are pooled. ``larger_better`` gives each objective's direction for
    metrics this project does not name (an external table's); by default study.metrics's.
    """
    if larger_better is None:
        for name in objectives:
            check_metric(trials, name)
        larger_better = [maximize(n) for n in objectives]
    flags = pd.Series(False, index=trials.index)
    pool = trials[_candidates(trials, include_stopped)]
    groups = pool.groupby("study", sort=False) if by_study else [(None, pool)]
    for _, part in groups:
        values = part[objectives].to_numpy(dtype=float)
        flags.loc[part.index] = pareto_mask(values, larger_better)
    return flags


def front_rows(
    trials: pd.DataFrame, x: str, y: str, include_stopped: bool = False, by_study: bool = False
) -> pd.DataFrame:
    """The front of ``y`` against ``x`` as rows sorted by ``x`` (better first)."""
    rows = trials[front_flags(trials, [y, x], include_stopped, by_study)]
    return rows.sort_values([x, y], ascending=[not maximize(x), not maximize(y)], kind="stable")


def front_hypervolumes(
    trials: pd.DataFrame, x: str, y: str, include_stopped: bool = False
) -> tuple[dict[str, float], tuple[float, float]]:
    """Each study's hypervolume of ``y`` vs ``x`` against one shared reference point: the worst
    ``y`` and the worst ``x`` among all studies' candidates (so overlaid studies compare)."""
    check_metric(trials, x)
    check_metric(trials, y)
    pool = trials[_candidates(trials, include_stopped) & trials[x].notna() & trials[y].notna()]
    if not len(pool):
        return {}, (math.nan, math.nan)
    reference = tuple(float(pool[c].min() if maximize(c) else pool[c].max()) for c in (y, x))
    volumes = {
        study: hypervolume_2d(part[[y, x]].to_numpy(float), [maximize(y), maximize(x)], reference)
        for study, part in pool.groupby("study", sort=False)
    }
    return volumes, reference


def pareto_column(quality: str) -> str:
    """The name of trials.csv's flag of the front of ``quality`` against peak memory."""
    return f"pareto_{quality}_{M.PEAK_MEM_MB}"


def with_pareto_column(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``pareto_eval_loss_peak_mem_mb`` (each study's finished front, as drawn) and,
    for several studies, ``..._pooled`` (the front of all of them together); the same for each
    classification metric the trials have (``pareto_accuracy_peak_mem_mb``, ...)."""
    out = trials.copy()
    for quality in [M.EVAL_LOSS, *present(trials, (*M.CLASSIFY_EVAL, M.REWARD_ACCURACY))]:
        objectives = [quality, M.PEAK_MEM_MB]
        out[pareto_column(quality)] = front_flags(trials, objectives)
        if trials["study"].nunique() > 1:
            pooled = front_flags(trials, objectives, by_study=False)
            out[f"{pareto_column(quality)}_pooled"] = pooled
    return out


def best_trial(
    trials: pd.DataFrame, objective: str = M.EVAL_LOSS, max_mem_mb: float | None = None
) -> pd.Series | None:
    """The best finished trial on ``objective`` with ``peak_mem_mb <= max_mem_mb`` (or None).

    Ties on the objective go to the lower peak memory, then to the first by study and trial id,
    so the answer does not depend on the order the directories were listed in.
    """
    check_metric(trials, objective)
    pool = trials[eligible(trials, [objective], max_mem_mb=max_mem_mb)]
    if not len(pool):
        return None
    order = pool.sort_values(
        [objective, M.PEAK_MEM_MB, "study", "group", "trial"],
        ascending=[not maximize(objective), True, True, True, True],
        na_position="last",
        kind="stable",
    )
    return order.iloc[0]


def eligible(
    trials: pd.DataFrame,
    metrics: list[str],
    include_stopped: bool = False,
    max_mem_mb: float | None = None,
) -> pd.Series:
    """Boolean Series: the trial may be picked (a finished one, or stopped if asked, with every
    metric measured and within the memory budget)."""
    mask = _candidates(trials, include_stopped)
    for name in metrics:
        mask &= trials[name].notna()
    if max_mem_mb is not None:
        mask &= trials[M.PEAK_MEM_MB].notna() & (trials[M.PEAK_MEM_MB] <= max_mem_mb)
    return mask


def left_out(
    trials: pd.DataFrame,
    metrics: list[str],
    include_stopped: bool = False,
    max_mem_mb: float | None = None,
) -> str:
    """Why the trials that :func:`eligible` refuses were left out, as one line ("" if none):
    ``3 of 9 trials left out: 1 stopped, 1 status unknown, 1 without exact_match``."""
    ok = ["finished", "stopped"] if include_stopped else ["finished"]
    reasons: dict[str, int] = {}
    for _, row in trials.iterrows():
        if row["status"] not in ok:
            unknown = f"status unknown (no readable {record.STATUS})"
            why = unknown if row["status"] == "unknown" else str(row["status"])
        elif missing := [m for m in metrics if pd.isna(row[m])]:
            why = f"without {missing[0]}"
        elif max_mem_mb is not None and not row[M.PEAK_MEM_MB] <= max_mem_mb:
            why = f"{M.PEAK_MEM_MB} over {max_mem_mb:g}"
        else:
            continue
        reasons[why] = reasons.get(why, 0) + 1
    if not reasons:
        return ""
    parts = ", ".join(f"{n} {why}" for why, n in reasons.items())
    return f"{sum(reasons.values())} of {len(trials)} trials left out: {parts}"


def train_one_command(row: pd.Series | dict) -> str:
    """A ready-to-run ``python -m study.train_one`` command that repeats the trial's config."""
    config = str(record.config_path(Path(row["trial_dir"]).resolve()))
    out = Path("runs") / f"{row['study']}-{row['trial']}".replace("/", "-")
    return shlex.join(["python", "-m", "study.train_one", "--config", config, "--out", str(out)])


def format_table(rows: pd.DataFrame, columns: list[str]) -> str:
    """A plain-text table (numbers as study.metrics.number prints them)."""
    body = [[M.number(v) for v in row] for row in rows[columns].itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
