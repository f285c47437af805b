"""The end-of-study summary: best trial per objective, Pareto set, errors, the memory estimate.

    print_summary(study_dir, objectives, num_samples=8, estimate=estimator(facts))

Read from the trial directories (through ``study.record``, as the rest of ``analysis``) and the
Optuna journal (``study.journal``), so it is the same after a resume as after an uninterrupted
run. ``python -m study.tune`` prints it
when a study ends.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from analysis.load import ResultWarning, load_study
from analysis.pareto import pareto_mask
from analysis.selection import label
from analysis.trial_row import config_columns
from study import journal, record
from study import metrics as M
from study.metrics import number


def collect(study_dir: Path, found: list[str] | None = None) -> list[dict]:
    """One record per trial of the study, read by :func:`analysis.load.load_study` (the loader
    the report uses): ``config``, ``metrics``, ``env`` and ``status`` as read, ``trial``,
    ``group`` and ``dir``. The loader's warnings (a
    damaged file, a deleted trial) go into ``found`` instead of Python's warnings: the summary
    prints them itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultWarning)
        data = load_study(study_dir)
    if found is not None:
        found.extend(data.warnings)
    return [
        {"trial": row["trial"], "group": row["group"], "dir": row["trial_dir"],
         **data.files[row["trial_dir"]]}
        for _, row in data.trials.iterrows()
    ]


def trial_label(trial: dict, model: bool = False) -> str:
    """The trial's label as the report writes it (selection.label, detail=True), from its
    config and, where it has one, its env.json (the storage of the base's weights)."""
    row = config_columns(trial["config"])
    row["weights"] = (trial.get("env") or {}).get("weights")
    return label(row, model, detail=True)


def _test_metric(quality: str, config: dict) -> str:
    """The held-out metric printed beside a Pareto point: the test split's own value of a
    maximised quality metric (test_accuracy for accuracy), else the task's headline test
    metric (test_accuracy for classify, test_exact_match otherwise)."""
    if M.mode(quality) == "max" and quality in M.TEST_OF:
        return M.TEST_OF[quality]
    classify = (config.get("data") or {}).get("task") == "classify"
    return M.TEST_ACCURACY if classify else M.TEST_EXACT_MATCH


def _where(row: dict) -> str:
    """A trial's place: its directory, and its configuration id and replicate when the study
    ran each configuration more than once."""
    status = row.get("status") or {}
    config_id, replicate = status.get(record.CONFIG_ID), status.get(record.REPLICATE)
    if config_id is None or replicate is None or row.get("repeats", 1) < 2:
        return f"[{row['group']}/{row['trial']}]"
    return f"[{row['group']}/{row['trial']} = {str(config_id)[:8]} r{replicate}]"


def print_summary(
    study_dir: Path,
    objectives: list[str],
    num_samples: int,
    time_budget_s: float | None = None,
    estimate: Callable[[dict], float] | None = None,
    duration: Callable[[dict], float] | None = None,
    band: Callable[[dict], float] | None = None,
) -> None:
    """Print the summary of a finished (or resumed-and-finished) study.

    ``estimate`` maps a trial's config to its memory estimate (compared with the measured peaks
    when given), ``band`` to the share of it --max-mem-mb adds (the estimate's measured error
    band); ``duration`` to its estimated seconds (compared with each
    finished trial's ``trial_s``).
    """
    found: list[str] = []
    rows = collect(study_dir, found)
    repeats = _mark_repeats(rows)
    # trials of several models (the model searched): each line names its model
    models = {(r["config"].get("model") or {}).get("name") for r in rows}
    by_model = len(models - {None}) > 1
    finished = [r for r in rows if r["status"].get("status") == record.FINISHED]
    searched = [r for r in rows if r["group"] == record.SEARCH]
    _print_counts(study_dir, rows, searched)
    _print_best(finished, objectives, by_model)
    if repeats > 1:
        _print_replicates(rows, objectives[0], by_model)
    _print_pareto(finished, objectives[0], by_model)
    _print_errored(rows, by_model)
    if estimate is not None:
        _print_memory_estimate(finished, estimate, band)
    if duration is not None:
        _print_durations(finished, duration)
    _print_precision(finished)
    _print_compile(finished)
    _print_search(study_dir, len(searched), num_samples, time_budget_s)
    _print_problems(found)
    print(f"\nBuild the report: python -m analysis report {study_dir}")


def _mark_repeats(rows: list[dict]) -> int:
    """How many replicates the study ran of each configuration (1 + the highest replicate
    number), stored in every row as ``repeats`` (``_where`` names replicates only then)."""
    seen = [r["status"].get(record.REPLICATE) for r in rows]
    repeats = 1 + max((v for v in seen if isinstance(v, int) and v >= 0), default=0)
    for r in rows:
        r["repeats"] = repeats
    return repeats


def _print_counts(study_dir: Path, rows: list[dict], searched: list[dict]) -> None:
    """The headline: searched trials by how they ended, and the baselines."""
    counts = {
        s: sum(r["status"].get("status") == s for r in searched)
        for s in ("finished", "stopped", "errored")
    }
    print(
        f"\nStudy {study_dir.name}: {len(searched)} searched trials "
        f"({counts['finished']} finished, {counts['stopped']} stopped by ASHA, "
        f"{counts['errored']} errored) + "
        f"{sum(r['group'] == record.BASELINES for r in rows)} baselines -> {study_dir}"
    )


def _print_best(finished: list[dict], objectives: list[str], by_model: bool) -> None:
    """The best finished trial on each objective that some finished trial measured; on a
    resource, the best searched trial: a baseline is no pick there (the untrained base's
    train_s is 0, its memory the least), only a reference."""
    for objective in objectives:
        candidates = [r for r in finished if r["metrics"].get(objective) is not None
                      and (objective not in M.RESOURCES or r["group"] != record.BASELINES)]
        if candidates:
            pick = (max if M.mode(objective) == "max" else min)(
                candidates, key=lambda r: r["metrics"][objective]
            )
            print(
                f"  best {objective}: {number(pick['metrics'][objective])}  "
                f"{_where(pick)} {trial_label(pick, by_model)}"
            )


def _print_pareto(finished: list[dict], quality: str, by_model: bool) -> None:
    """The finished trials no other beats on both ``quality`` and peak memory, by memory."""
    points = [
        r
        for r in finished
        if r["metrics"].get(quality) is not None and r["metrics"].get(M.PEAK_MEM_MB) is not None
    ]
    if not points:
        return
    values = np.array([[r["metrics"][quality], r["metrics"][M.PEAK_MEM_MB]] for r in points])
    mask = pareto_mask(values, [M.mode(quality) == "max", False])
    print(f"  Pareto set ({quality} vs {M.PEAK_MEM_MB}, finished trials):")
    for r in sorted(
        (r for r, m in zip(points, mask) if m), key=lambda r: r["metrics"][M.PEAK_MEM_MB]
    ):
        test = _test_metric(quality, r["config"])
        print(
            f"    {quality} {number(r['metrics'][quality])}, "
            f"peak {r['metrics'][M.PEAK_MEM_MB]:.0f} MB, "
            f"{test} {number(r['metrics'].get(test))}  "
            f"{_where(r)} {trial_label(r, by_model)}"
        )


def _print_errored(rows: list[dict], by_model: bool) -> None:
    """Each errored trial with its reason, then the command that reruns on a whole GPU each
    one that ran out of its share of a GPU."""
    shared_oom = []
    for r in rows:
        if r["status"].get("status") == record.ERRORED:
            reason = str(r["status"].get("reason"))
            what = trial_label(r, by_model)
            print(f"  errored {_where(r)} {what}: {reason}")
            if reason.startswith(record.SHARED_GPU_OOM):
                shared_oom.append(r)
    if shared_oom:
        print(f"  {len(shared_oom)} configuration(s) ran out of their share of a GPU "
              "(--gpus-per-trial below 1); each may fit a whole GPU:")
        for r in shared_oom:
            trial = Path(r["dir"])
            print(f"    python -m study.train_one --config {trial / record.CONFIG} "
                  f"--out {trial.parent / (trial.name + '-whole-gpu')}")


def _print_memory_estimate(finished: list[dict], estimate: Callable[[dict], float],
                           band: Callable[[dict], float] | None) -> None:
    """Per finished trial its memory estimate, the error band --max-mem-mb adds to it and its
    measured peak; then the errors of the LoRA trials, and apart those of full fine-tuning and
    the base (other terms of the model: a frozen copy, no training)."""
    errors: dict[str, list[float]] = {"lora": [], "other": []}
    lines = []
    for r in finished:
        measured = r["metrics"].get(M.PEAK_MEM_MB)
        if not measured:
            continue
        mb = estimate(r["config"])
        share = band(r["config"]) if band is not None else 0.0
        error = 100 * (mb - measured) / measured
        errors["lora" if r["config"]["method"] == "lora" else "other"].append(error)
        lines.append(f"    {mb:6.0f} MB estimated (+{100 * share:.0f}% band: {mb * (1 + share):.0f}"
                     f" MB gated), {measured:6.0f} MB measured ({error:+4.0f}%)  {_where(r)} "
                     f"{trial_label(r)}")
    if not lines:
        return
    print("  memory estimate vs measured peak (the training phase):")
    print("\n".join(lines))
    for kind, name in (("lora", "LoRA trials"), ("other", "full fine-tuning and base")):
        if values := errors[kind]:
            print(f"    {name}: mean error {np.mean(values):+.0f}%, mean |error| "
                  f"{np.mean(np.abs(values)):.0f}%, range {min(values):+.0f}% to "
                  f"{max(values):+.0f}% over {len(values)} trials")


def _print_replicates(rows: list[dict], objective: str, by_model: bool) -> None:
    """Per configuration (its config_id): how many replicates finished, and the mean and the
    standard deviation of ``objective`` over them once two have."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        config_id = r["status"].get(record.CONFIG_ID)
        if config_id is not None:
            groups.setdefault((r["group"], config_id), []).append(r)
    print(f"  per configuration ({objective} over its finished replicates, mean +- sd):")
    for (group, config_id), members in groups.items():
        values = [r["metrics"][objective] for r in members
                  if r["status"].get("status") == record.FINISHED
                  and isinstance(r["metrics"].get(objective), (int, float))]
        spread = (f"{np.mean(values):.4g} +- {np.std(values, ddof=1):.2g}" if len(values) > 1
                  else number(values[0]) if values else "-")
        print(f"    {group}/{str(config_id)[:8]}: {len(values)} of {len(members)} finished, "
              f"{spread}  {trial_label(members[0], by_model)}")


def _print_durations(finished: list[dict], duration: Callable[[dict], float]) -> None:
    """Estimated against measured wall time, per finished trial (trial_s: run_trial's time)."""
    timed = [r for r in finished if r["metrics"].get(M.TRIAL_S)]
    if not timed:
        return
    errors = []
    by_model = len({(r["config"].get("model") or {}).get("name") for r in timed} - {None}) > 1
    print("  time estimate vs measured trial time (trials run to their end):")
    for r in timed:
        actual, estimated = r["metrics"][M.TRIAL_S], duration(r["config"])
        errors.append(100 * (estimated - actual) / actual)
        print(f"    {estimated:6.0f} s estimated, {actual:6.0f} s measured ({errors[-1]:+4.0f}%)  "
              f"{_where(r)} {trial_label(r, by_model)}")
    print(f"    median |error| {np.median(np.abs(errors)):.0f}% over {len(errors)} trials")


def _print_precision(finished: list[dict]) -> None:
    """The compute precision the finished trials ran in, and for train.dtype=auto the matmul
    timings it was chosen by (see study.trial.precision)."""
    seen: dict[str, int] = {}
    for r in finished:
        choice = r["env"].get("dtype_choice")
        if not isinstance(choice, dict) or not choice.get("name"):
            continue
        times = choice.get("timings_ms") or {}
        how = ", ".join(f"{k} {v:.3g} ms" for k, v in times.items() if isinstance(v, int | float))
        text = choice["name"] + (f" ({choice.get('asked')}: {how} per matmul)" if how else "")
        seen[text] = seen.get(text, 0) + 1
    for text, n in seen.items():
        print(f"  compute precision: {text}, {n} finished trial{'s' * (n != 1)}")


def _print_compile(finished: list[dict]) -> None:
    """Whether the finished trials ran compiled (train.compile), with one trial's reason per
    choice and what compiling cost them in all (their ``compile_s``; see study.trial.compiling)."""
    seen: dict[str, list[dict]] = {}
    for r in finished:
        choice = r["env"].get("compile")
        if isinstance(choice, dict) and choice.get("chosen"):
            seen.setdefault(f"{choice['chosen']} ({choice.get('asked')})", []).append(r)
    for chosen, rows in seen.items():
        spent = sum(v for r in rows if isinstance(v := r["metrics"].get(M.COMPILE_S), int | float))
        reason = rows[0]["env"]["compile"].get("reason")
        print(f"  compile: {chosen}, {len(rows)} finished trial{'s' * (len(rows) != 1)}, "
              f"{spent:.0f} s compiling in all; e.g. {reason}")


MAX_PROBLEMS = 10  # lines of loading problems the summary prints; the report lists every one


def _print_problems(found: list[str]) -> None:
    """What the loader found damaged or missing (the report's "Problems found while loading")."""
    if not found:
        return
    print(f"  problems found while loading ({len(found)}):")
    for message in found[:MAX_PROBLEMS]:
        print(f"    {message}")
    if len(found) > MAX_PROBLEMS:
        print(f"    ... and {len(found) - MAX_PROBLEMS} more (the report lists them all)")


def _print_search(
    study_dir: Path, searched: int, num_samples: int, time_budget_s: float | None
) -> None:
    """What the Optuna journal says of the search: suggestions not trained, why it ended."""
    try:
        study = journal.load(study_dir)
    except record.RecordError:
        return  # the loader's warning names it (_print_problems)
    if study is None:
        return
    facts = journal.outcomes(study)
    if facts["not_launched"]:
        print(
            f"  not launched (over the memory budget): {facts['not_launched']} suggestions, "
            "told to Optuna as PRUNED with their excess as a constraint"
        )
    if facts["repeats"] or facts["duplicates"]:
        print(
            "  suggestions answered from an identical trial (not trained again): "
            f"{facts['repeats'] + facts['duplicates']}"
        )
    if facts["interrupted"]:
        count = facts["interrupted"]
        print(f"  trials a kill interrupted, continued in their own directories: {count}")
    if facts["search_ended"]:
        print(
            f"  the search ended after {searched} of --num-samples {num_samples}: "
            f"{facts['search_ended']}"
        )
    elif searched < num_samples and time_budget_s:
        print(
            f"  the search ended after {searched} of --num-samples {num_samples}: "
            f"--time-budget-s {time_budget_s:g} ran out"
        )
