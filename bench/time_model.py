"""The time estimate against measured trials: fit its coefficients, or check them.

    python -m bench.time_model results/demo-x results/smoke-y   # check: estimate vs trial_s
    python -m bench.time_model --fit DIR [DIR ...]               # fit COEFFICIENTS on them

Each DIR is a study directory or a directory of trial directories (``bench/memory_model.py
--keep``); every trial with config.json, metrics.json and env.json is used. The fit is a
non-negative least squares per phase (``load_s``, ``train_s``, ``eval_s`` and the rest of
``trial_s``) of the measured seconds on ``study.cost.timing.terms``; a trial stopped early (ASHA)
counts for the training phase with the steps it ran. Printed: the coefficients (to paste into
``study.cost.timing.COEFFICIENTS``), and per trial the estimate against ``trial_s``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line  # noqa: E402
from study import metrics as M  # noqa: E402
from study import record  # noqa: E402

TARGETS = ["qv", "qkv", "qkvo", "all-linear"]
# kept at their value: with one batch shape in most runs, per-call and per-FLOP costs of
# training cannot be told apart, and FLOPs are what scales to other batch shapes
FIXED = ("train.calls", "other.compile")  # other.compile: measured (study.cost.timing)


def trials(dirs: list[Path]) -> list[dict]:
    """Every trial directory under ``dirs`` with its config, metrics and env."""
    out = []
    for top in dirs:
        for trial in sorted(p for p in [top, *top.rglob("*")] if p.is_dir()):
            if not record.has_config(trial) or not record.has_metrics(trial):
                continue
            try:
                out.append({"dir": trial, "config": record.read_config(trial),
                            "metrics": record.read_metrics(trial)})
            except (OSError, ValueError):
                continue
    return [t for t in out if t["metrics"]]


_FACTS: dict[str, object] = {}


def facts_of(cfg):
    from study.cost.estimate import model_facts

    if cfg.model.name not in _FACTS:
        _FACTS[cfg.model.name] = model_facts(cfg, TARGETS)[0]
    return _FACTS[cfg.model.name]


def phases(trial: dict):
    """(the config as run, its terms, the measured seconds per phase) of one trial."""
    from study.config import TrialConfig
    from study.cost.timing import machine_speed, terms

    cfg = TrialConfig.from_dict(trial["config"])
    m = trial["metrics"]
    final = bool(m.get(record.FINAL))
    if not final and cfg.method != "base":  # stopped: the steps it ran
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=m["step"],
                                                                 epochs=None))
    facts = facts_of(cfg)
    # the share of prompts generated: those whose answer the loss pass did not give, about the
    # wrong ones (the estimate before launch assumes GENERATED_SHARE)
    scores = [m[k] for k in (M.EXACT_MATCH, M.TEST_EXACT_MATCH) if m.get(k) is not None]
    generated = 1.0 - sum(scores) / len(scores) if scores else None
    sizes = terms(cfg, facts, machine_speed(cfg, facts), generated)
    measured = {"load": m.get(M.LOAD_S), "train": m.get(M.TRAIN_S)}
    if final:
        measured["eval"] = m.get(M.EVAL_S)
        if m.get(M.TRIAL_S) is not None:
            measured["other"] = m[M.TRIAL_S] - sum(m.get(k) or 0.0 for k in
                                                   (M.LOAD_S, M.TRAIN_S, M.EVAL_S))
    return cfg, sizes, {k: v for k, v in measured.items() if v is not None}


def fit(rows: list[dict]) -> dict[str, float]:
    import numpy as np

    def nnls(a, b):  # least squares, dropping terms that come out negative (no scipy here)
        active = list(range(a.shape[1]))
        while True:
            coef = np.zeros(a.shape[1])
            coef[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
            negative = [j for j in active if coef[j] < 0]
            if not negative:
                return coef, None
            active = [j for j in active if j not in negative]

    from study.cost.timing import COEFFICIENTS

    out = {}
    for phase in ("load", "train", "eval", "other"):
        keys = [k for k in COEFFICIENTS if k.startswith(phase + ".") and k not in FIXED]
        used = [r for r in rows if phase in r["measured"]]
        if not used:
            continue
        design = np.array([[r["terms"][k] for k in keys] for r in used])
        target = np.array([r["measured"][phase] for r in used])
        # relative errors matter (a 5 s trial and a 500 s one alike): weight rows by 1/target
        weight = 1.0 / np.maximum(target, 0.5)
        coef, _ = nnls(design * weight[:, None], target * weight)
        out.update({k: float(c) for k, c in zip(keys, coef)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--fit", action="store_true", help="fit the coefficients on these")
    args = parser.parse_args()
    from study.cost.timing import COEFFICIENTS, trial_time

    rows = []
    for trial in trials(args.dirs):
        cfg, sizes, measured = phases(trial)
        rows.append({"trial": trial, "cfg": cfg, "terms": sizes, "measured": measured})
    if args.fit:
        fitted = fit(rows)
        print("COEFFICIENTS = {")
        for k in COEFFICIENTS:
            print(f'    "{k}": {fitted.get(k, COEFFICIENTS[k]):.4g},')
        print("}")
        COEFFICIENTS.update(fitted)
    print(f"\nMachine: {machine_line(machine())}\n")
    print("| trial | estimate s | trial_s | error | load | train | eval |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    errors = []
    for r in rows:
        m = r["trial"]["metrics"]
        if not m.get(record.FINAL) or m.get(M.TRIAL_S) is None:
            continue
        t = trial_time(r["cfg"], facts_of(r["cfg"]))
        err = 100 * (t.total_s - m[M.TRIAL_S]) / m[M.TRIAL_S]
        errors.append(abs(err))
        name = "/".join(r["trial"]["dir"].parts[-2:])
        print(f"| {name} | {t.total_s:.1f} | {m[M.TRIAL_S]:.1f} | {err:+.0f}% | "
              f"{t.load_s:.1f}/{m.get(M.LOAD_S) or 0:.1f} | {t.train_s:.1f}/{m[M.TRAIN_S]:.1f} | "
              f"{t.eval_s:.1f}/{m[M.EVAL_S]:.1f} |")
    if errors:
        print(f"\nmedian |error| {statistics.median(errors):.0f}%, max {max(errors):.0f}% over "
              f"{len(errors)} finished trials")


if __name__ == "__main__":
    main()
