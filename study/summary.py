"""The end-of-study summary: best trial per objective, Pareto set, errors, the memory estimate.

Read from the trial directories only (the same files ``analysis`` reads), so it is the same
after a resume as after an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis.pareto import pareto_mask
from study import metrics as M
from study.callbacks import read_status


def collect(study_dir: Path) -> list[dict]:
    """One record per trial directory of the study: config, metrics, status, group."""
    rows = []
    for group in ("search", "baselines"):
        for trial_dir in sorted((study_dir / group).glob("*/config.json")):
            d = trial_dir.parent
            try:
                config = json.loads((d / "config.json").read_text())
                metrics = (
                    json.loads((d / "metrics.json").read_text())
                    if (d / "metrics.json").is_file()
                    else {}
                )
            except json.JSONDecodeError:
                continue
            rows.append(
                {
                    "trial": d.name,
                    "group": group,
                    "config": config,
                    "metrics": metrics,
                    "status": read_status(d),
                }
            )
    return rows


def describe(config: dict) -> str:
    """A short label: method, rank/alpha/targets, bits, size, lr."""
    lora, method = config["lora"], config["method"]
    what = (
        f"lora r{lora['rank']} a{lora['alpha']:g} {lora['targets']}" if method == "lora" else method
    )
    return (
        f"{what}, {config['quant']['bits']}-bit, size {config['data']['size']}, "
        f"lr {config['train']['lr']:.2g}"
    )


def _fmt(value) -> str:
    return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def print_summary(plan) -> None:
    """Print the summary of a finished (or resumed-and-finished) study."""
    from study.tune_run import estimate_for

    rows = collect(plan.study_dir)
    finished = [r for r in rows if r["status"].get("status") == "finished"]
    searched = [r for r in rows if r["group"] == "search"]
    counts = {
        s: sum(r["status"].get("status") == s for r in searched)
        for s in ("finished", "stopped", "errored")
    }
    print(
        f"\nStudy {plan.name}: {len(searched)} searched trials ({counts['finished']} finished, "
        f"{counts['stopped']} stopped by ASHA, {counts['errored']} errored) + "
        f"{sum(r['group'] == 'baselines' for r in rows)} baselines -> {plan.study_dir}"
    )
    for objective in plan.objectives:
        candidates = [r for r in finished if r["metrics"].get(objective) is not None]
        if candidates:
            pick = (max if M.mode(objective) == "max" else min)(
                candidates, key=lambda r: r["metrics"][objective]
            )
            print(
                f"  best {objective}: {_fmt(pick['metrics'][objective])}  "
                f"[{pick['group']}/{pick['trial']}] {describe(pick['config'])}"
            )
    quality = plan.objectives[0]
    points = [
        r
        for r in finished
        if r["metrics"].get(quality) is not None and r["metrics"].get(M.PEAK_MEM_MB) is not None
    ]
    if points:
        values = np.array([[r["metrics"][quality], r["metrics"][M.PEAK_MEM_MB]] for r in points])
        mask = pareto_mask(values, [M.mode(quality) == "max", False])
        print(f"  Pareto set ({quality} vs {M.PEAK_MEM_MB}, finished trials):")
        for r in sorted(
            (r for r, m in zip(points, mask) if m), key=lambda r: r["metrics"][M.PEAK_MEM_MB]
        ):
            print(
                f"    {quality} {_fmt(r['metrics'][quality])}, "
                f"peak {r['metrics'][M.PEAK_MEM_MB]:.0f} MB, "
                f"test_exact_match {_fmt(r['metrics'].get(M.TEST_EXACT_MATCH))}  "
                f"[{r['group']}/{r['trial']}] {describe(r['config'])}"
            )
    for r in rows:
        if r["status"].get("status") == "errored":
            print(
                f"  errored [{r['group']}/{r['trial']}] {describe(r['config'])}: "
                f"{r['status'].get('reason')}"
            )
    errors = []
    for r in finished:
        measured = r["metrics"].get(M.PEAK_MEM_MB)
        if measured:
            estimate = estimate_for(r["config"], plan.facts)
            errors.append(100 * (estimate - measured) / measured)
    if errors:
        print(
            f"  memory estimate vs measured peak: mean error {np.mean(errors):+.0f}%, "
            f"range {min(errors):+.0f}% to {max(errors):+.0f}% over {len(errors)} trials"
        )
    optuna_file = plan.study_dir / "optuna.json"
    if optuna_file.is_file():
        record = json.loads(optuna_file.read_text())
        rejected = record.get("rejected", [])
        if rejected:
            print(f"  not launched (over the memory budget): {len(rejected)} configurations")
        if record.get("repeats"):
            print(
                f"  repeats answered from an earlier identical trial (not trained again): "
                f"{record['repeats']}"
            )
        if len(searched) < plan.args.num_samples and not plan.args.time_budget_s:
            print(
                f"  the search ended after {len(searched)} of --num-samples "
                f"{plan.args.num_samples}: every configuration of this space has run"
            )
    print(f"\nBuild the report: python -m analysis report {plan.study_dir}")
