"""Early-stopping trust (issue 37): the rung-to-final Spearman correlation of analysis.rungs
against scipy directly, its rungs against StudyASHA's, the report's at-least-5 rule, and a
replicated ASHA study's report (a synthetic study directory: no training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.page import render_page
from analysis.rungs import MIN_TRIALS, rung_sections, rung_steps, spearman_interval, study_rungs
from study import record

ASHA = {"metric": "eval_loss", "grace": 10, "reduction_factor": 2.0, "max_t": 40}
STEPS = (10, 20, 30, 40)


@pytest.mark.parametrize("grace, rf, max_t", [(10, 2.0, 40), (10, 3, 40), (2, 2, 6), (5, 4, 80),
                                              (7, 1.5, 50), (40, 2, 40)])
def test_rungs_are_study_ashas_below_the_end(grace, rf, max_t):
    from study.search.asha import StudyASHA

    asha = StudyASHA(metric="eval_loss", mode="min", max_t=max_t, grace=grace,
                     reduction_factor=rf)
    assert rung_steps(grace, rf, max_t) == sorted(m for m, _ in asha.rungs if m < max_t)


def test_spearman_interval_is_scipys_rho_with_the_fisher_z_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    y[:3] = y[3]  # ties: average ranks, as scipy gives them
    rho, low, high = spearman_interval(x, y)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    z, se = np.arctanh(rho), math.sqrt((1 + rho**2 / 2) / (12 - 3))
    assert (low, high) == pytest.approx(np.tanh([z - 1.959963984540054 * se,
                                                 z + 1.959963984540054 * se]), abs=1e-12)
    assert spearman_interval(x, -x) == pytest.approx((-1, -1, -1))
    assert all(math.isnan(v) for v in spearman_interval(x, np.ones(12)))


def _frames(finals: list[float], stopped: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials and curves as analysis.load gives them: ``len(finals)`` finished trials, whose
    eval loss at step s is final + noise / s, and ``stopped`` trials stopped at step 10."""
    rng = np.random.default_rng(len(finals))
    trials, curves = [], []
    for i, final in enumerate([*finals, *[9.0] * stopped]):
        done = i < len(finals)
        name = f"t{i}"
        trials.append({"study": "s", "group": record.SEARCH, "trial": name,
                       "status": record.FINISHED if done else record.STOPPED,
                       "eval_loss": final if done else math.nan})
        for step in STEPS if done else STEPS[:1]:
            value = final + rng.uniform(0, 3) / step * 10
            curves.append({"study": "s", "group": record.SEARCH, "trial": name, "step": step,
                           "eval_loss": final if step == 40 else value})
    return pd.DataFrame(trials), pd.DataFrame(curves)


def test_study_rungs_pair_the_first_value_at_a_rung_with_the_end_among_finished_trials():
    trials, curves = _frames([1.0, 1.2, 0.8, 1.5, 0.9, 1.1], stopped=2)
    rows = study_rungs(trials, curves, ASHA)
    assert [r["step"] for r in rows] == [10, 20]
    for row in rows:
        early = curves[(curves["step"] == row["step"]) & curves["trial"].isin(
            trials.loc[trials["status"] == record.FINISHED, "trial"])]
        final = trials.set_index("trial").loc[early["trial"], "eval_loss"]
        assert row["rho"] == pytest.approx(
            stats.spearmanr(early["eval_loss"], final).statistic, abs=1e-12)
        assert row["n"] == 6 and row["enough"]
    assert [r["reached"] for r in rows] == [8, 6]  # the stopped trials reached step 10 only


def _page(finals: list[float]) -> str:
    trials, curves = _frames(finals, stopped=1)
    return render_page("t", len(trials), rung_sections(trials, curves, {"s": {"asha": ASHA}}))


def test_five_trials_give_the_figure_and_four_say_too_few():
    assert MIN_TRIALS == 5
    four, five = _page([1.0, 1.2, 0.8, 1.5]), _page([1.0, 1.2, 0.8, 1.5, 0.9])
    assert ("Step 10: too few trials reached both step 10 and the end for a rank correlation "
            "(4; it needs 5)") in four
    assert "Spearman&#39;s rho" not in four.split("<ul class='answer'>")[1]
    assert "among the 5 trials that reached both step 10 and the end: survivors only, so it " \
           "can overstate how well the rung ranks (1 trial that reached step 10 but not the end " \
           "is left out)" in five
    assert "too few" not in five


def test_a_study_without_asha_has_no_section():
    trials, curves = _frames([1.0, 1.2, 0.8, 1.5, 0.9])
    assert rung_sections(trials, curves, {"s": {"asha": None}}) == []
    assert rung_sections(trials, curves, {"s": {}}) == []


def _write_study(study: Path, configs: int = 4, repeats: int = 2) -> None:
    """A replicated ASHA study as study.tune leaves it: study.json with ASHA's settings, and
    per trial config.json, status.json (config_id, replicate), curve.jsonl and metrics.json;
    one replicate of the worst configuration stopped at the first rung."""
    command = ["python", "-m", "study.tune", "--space", "smoke", "--repeats", str(repeats)]
    record.write_study(study, {"command": command, "space": {}, "objectives": ["eval_loss"],
                               "asha": ASHA, "fixed": {"baselines": []}})
    rng = np.random.default_rng(1)
    for c in range(configs):
        for r in range(repeats):
            d = record.group_dir(study, record.SEARCH) / f"c{c}r{r}"
            d.mkdir(parents=True)
            record.write_config(d, {"method": "lora", "seed": r, "model": {"name": "tiny-llama"},
                                    "lora": {"rank": 2 ** (c + 1), "targets": "qv"},
                                    "data": {"task": "skills"}, "train": {"steps": 40}})
            stop = c == configs - 1 and r == 0
            points = [{"step": s, "eval_loss": 2 - 0.1 * c + rng.uniform(0, 3) / s}
                      for s in (STEPS[:1] if stop else STEPS)]
            record.write_curve(d, points)
            measured = {"trainable_params": 1000 * 2 ** c, "peak_mem_mb": 500.0 + c}
            final = {} if stop else {record.FINAL: True}
            record.write_metrics(d, {**points[-1], **measured, **final})
            record.write_status(d, record.STOPPED if stop else record.FINISHED, step=points[-1][
                "step"], **{record.CONFIG_ID: f"c{c}", record.REPLICATE: r})


def test_a_replicated_asha_studys_report_gives_the_rung_correlation(tmp_path):
    from analysis.report import build_report

    _write_study(tmp_path / "study")
    page = build_report([tmp_path / "study"], tmp_path / "out").read_text()
    assert "Early stopping: do the rungs rank as the end does?" in page
    for step in (10, 20):
        assert (f"among the 7 trials that reached both step {step} and the end: survivors only, "
                "so it can overstate how well the rung ranks") in page
    assert "(1 trial that reached step 10 but not the end is left out)" in page


def test_a_real_asha_study_records_asha_as_it_ran_and_its_report_reads_the_rungs(multi_study):
    """conftest's study (ASHA on eval_loss, --grace 2): study.json keeps the settings
    make_search used, and the report's rungs are StudyASHA's below the end."""
    from analysis.load import load_study

    info = record.read_study(multi_study)
    steps = info["space"]["train"]["steps"]
    assert info["asha"] == {"metric": "eval_loss", "grace": 2, "reduction_factor": 2.0,
                            "max_t": steps}
    data = load_study(multi_study)
    [section] = rung_sections(data.trials, data.curves, data.studies)
    rows = section.data["studies"][0]["rows"]
    assert [r["step"] for r in rows] == rung_steps(2, 2.0, steps)
    finished = data.trials[(data.trials["group"] == record.SEARCH)
                           & (data.trials["status"] == record.FINISHED)]
    assert all(r["n"] == len(finished) >= 1 for r in rows)  # a finished trial passed every rung
