"""The answer to the question asked (issue 37, acceptance 1 and 2): a focus factor against a
reference level, sentences that reconcile their tests, conditional factors (a baseline without
rank or modules), integer levels, and recommendations that read; on the committed thesis-shaped
fixture (tests/fixtures/make_thesis_runs.py says its known effects) and on small designs."""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.answer_text import sentence
from analysis.design import Design, level_order
from analysis.effects import anova, importance
from analysis.stats import AGREE, MEAN_ONLY, MEDIAN_ONLY, OPPOSITE, agreement
from analysis.table_input import from_table
from study.metrics import number

CSV = Path(__file__).resolve().parent / "fixtures" / "thesis_runs.csv"
FACTORS = "dataset,model,method,modules,rank"
TABLE = ["--table", str(CSV), "--factors", FACTORS, "--quality", "accuracy",
         "--resources", "gpu_mem_gb,time_min", "--replicate", "seed", "--data-size", "data_size"]
OLD_COLUMNS = ["factor", "level_a", "level_b", "metric", "n_pairs", "median_ratio", "mean_diff",
               "ci_low", "ci_high", "wilcoxon_p", "p_holm", "effect_size"]  # before issue 37
METHODS = ["QLoRA-nf4", "QLoRA-fp4", "baseline"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The acceptance command, run once: every test below reads what it wrote."""
    out = tmp_path_factory.mktemp("focus") / "report"
    assert main(["report", *TABLE, "--focus", "method", "--reference", "method=LoRA",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def answer(report) -> list[str]:
    """The answer's items as the page shows them (text)."""
    page = (report / "report.html").read_text()
    part = page[page.index("<ul class='answer'>"):page.index("</ul>")]
    return [html.unescape(item) for item in re.findall(r"<li>(.*?)</li>", part, re.S)]


def stats(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report / "stats" / f"{name}.csv")


def config_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Each configuration's mean over its seeds, computed here with pandas alone."""
    keys = ["dataset", "model", "method", "modules", "rank", "data_size"]
    return frame.groupby(keys, dropna=False)[["accuracy", "gpu_mem_gb", "time_min"]].mean()


def test_the_focus_leads_with_every_method_against_lora_then_the_others_by_importance(
        report, answer):
    first = answer[1]  # answer[0]: the best configuration
    starts = [first.index(f"method {m} ") for m in METHODS]
    assert first.startswith("method QLoRA-nf4 ") and starts == sorted(starts)
    focus = stats(report, "focus").set_index(["factor", "level", "metric"])
    for method, start, end in zip(METHODS, starts, [*starts[1:], len(first)]):
        said = first[start:end]
        row = focus.loc[("method", method, "accuracy")]
        assert row["reference"] == "LoRA"
        assert f"keeps {100 * row['median_ratio']:.1f}% of method LoRA's accuracy" in said
        assert f"median over {row['n_pairs']} pairs" in said
        assert f"95% CI [{number(row['ci_low'], 3)}, {number(row['ci_high'], 3)}]" in said
        assert f"Holm-corrected p = {number(row['p_holm'], 2)}" in said
        for resource in ("gpu_mem_gb", "time_min"):
            ratio = focus.loc[("method", method, resource), "median_ratio"]
            assert f"{number(ratio, 3)}x the {resource}" in said
    # the baseline pairs with LoRA averaged over the ranks and modules it does not have
    assert focus.loc[("method", "baseline", "accuracy"), "n_pairs"] == 24
    imp = stats(report, "importance")
    mean = imp[imp["metric"] == "accuracy"].groupby("factor")["importance"].mean()
    others = [p.split(" ", 1)[0] for p in answer[2:]]
    assert others == sorted(mean.drop("method").index, key=lambda f: -mean[f])


def test_comparisons_csv_keeps_its_columns(report):
    assert set(OLD_COLUMNS) <= set(stats(report, "comparisons").columns)


def _disagree(row) -> bool:
    """The two tests' verdicts, computed here: Wilcoxon (uncorrected) and the mean's interval."""
    median = row["wilcoxon_p"] < 0.05
    mean = row["ci_low"] > 0 or row["ci_high"] < 0
    return median != mean or (median and np.sign(row["effect_size"]) != np.sign(row["mean_diff"]))


def test_the_disagreement_sentence_appears_exactly_where_the_tests_disagree(report, answer):
    focus = stats(report, "focus")
    rows = focus[focus["metric"] == "accuracy"]
    seen = set()
    for _, row in rows.iterrows():
        said = next(s for p in answer[1:] for s in re.split(r"(?<=\.) (?=\w+ \S+ (?:keeps|has) )",
                                                             p)
                    if s.startswith(f"{row['factor']} {number(row['level'])} "))
        seen.add(_disagree(row))
        assert ("The tests disagree" in said) == _disagree(row), said
    assert seen == {True, False}  # nf4 disagrees, fp4 agrees (the fixture's known effects)
    nf4 = rows.set_index("level").loc["QLoRA-nf4"]
    assert nf4["agreement"] == MEAN_ONLY
    assert ("no significant difference for the median pair (Wilcoxon p = 0.67); the mean is "
            "0.00675 lower [0.00368, 0.0104]: a minority of pairs lost more") in answer[1]


@pytest.mark.parametrize("p, low, high, effect, kind", [
    (0.01, -0.3, -0.1, -0.5, AGREE), (0.40, -0.1, 0.2, 0.1, AGREE),
    (0.40, -0.3, -0.1, 0.1, MEAN_ONLY), (0.01, -0.1, 0.2, 0.6, MEDIAN_ONLY),
    (0.01, -0.3, -0.1, 0.6, OPPOSITE)])
def test_agreement_and_its_words(p, low, high, effect, kind):
    row = pd.Series({"factor": "quant", "reference": "lora", "level": "nf4", "metric": "acc",
                     "n_pairs": 20, "median_ratio": 1.01, "mean_diff": (low + high) / 2,
                     "ci_low": low, "ci_high": high, "wilcoxon_p": p, "p_holm": p,
                     "effect_size": effect})
    row["agreement"] = agreement(row)
    assert row["agreement"] == kind
    design = Design(runs=pd.DataFrame(), factors=["quant"], quality={"acc": True})
    said = sentence(design, row.to_frame().T, "acc", pd.DataFrame(columns=["within"]))
    assert ("The tests disagree" in said) == (kind != AGREE)
    if kind == OPPOSITE:
        assert "the median pair is higher" in said and "the mean is 0.2 lower [0.1, 0.3]" in said


def test_a_focus_comparison_that_changes_across_a_factor_gives_each_level(report, answer):
    by_level = stats(report, "focus_by_level")
    nf4 = by_level[by_level["level"] == "QLoRA-nf4"]
    assert set(nf4["within"]) == {"dataset", "data_size"}  # the loss is RU at size 300
    assert set(by_level["level"]) == {"QLoRA-nf4"}  # fp4 and the baseline hold everywhere
    en = nf4[nf4["within_level"] == "EN"].iloc[0]
    assert en["verdict"] == "higher" and en["mean_diff"] > 0
    assert "It changes across dataset" in answer[1]
    assert (f"at EN +{number(en['mean_diff'], 3)} [{number(en['ci_low'], 3)}, "
            f"{number(en['ci_high'], 3)}] (higher") in answer[1]


def test_a_baseline_without_rank_or_modules_gets_importances_for_the_other_runs(report):
    page = html.unescape((report / "report.html").read_text())
    assert ("Importance and the ANOVA read the 288 runs where every factor applies; left out: "
            "the 24 runs of method baseline, where modules and rank do not apply") in page
    assert "dynamic search spaces" not in page and "Cannot evaluate" not in page
    # the importances are Optuna's on the runs without the baseline
    design = from_table(CSV, FACTORS.split(","), {"accuracy": True}, {"gpu_mem_gb": False},
                        "seed", "data_size")
    trained = design.runs[design.runs["method"] != "baseline"]
    direct, notes = importance(dataclasses.replace(design, runs=trained))
    assert not notes
    mine = stats(report, "importance")
    mine = mine[mine["metric"] == "accuracy"].set_index(["evaluator", "factor"])["importance"]
    direct = direct.set_index(["evaluator", "factor"])["importance"]
    assert set(mine.index.get_level_values("factor")) == set(FACTORS.split(",")) | {"data_size"}
    assert mine.sort_index().to_numpy() == pytest.approx(direct.sort_index().to_numpy(), rel=1e-9)


def test_an_importance_optuna_refuses_is_a_note_in_the_report_s_words():
    """Four configurations with one value: fANOVA's forest has nothing to split (Optuna raises);
    PED-ANOVA still answers."""
    runs = pd.DataFrame({"rank": [4, 4, 8, 8], "t": ["a", "b", "a", "b"], "replicate": 0,
                         "acc": 0.5})
    runs["config"] = runs["rank"].astype(str) + runs["t"]
    runs["label"], runs["command"] = runs["config"], None
    design = Design(runs=runs, factors=["rank", "t"], quality={"acc": True},
                    orders={"rank": [4, 8], "t": ["a", "b"]})
    table, notes = importance(design)
    assert set(table["evaluator"]) == {"ped_anova"}
    assert notes == ["fANOVA importance of acc: not computed: its 4 configurations are too few "
                     "or too alike for it to tell the factors apart."]


def test_aliased_anova_terms_are_named_and_left_out():
    """gpu follows model (each model ran on its own GPU): no effect of its own."""
    rng = np.random.default_rng(1)
    rows = [{"model": m, "gpu": {"small": "T4", "large": "A100"}[m], "rank": r, "replicate": s,
             "acc": 0.7 + 0.05 * (m == "large") + 0.01 * (r == 16) + rng.normal(0, 0.01)}
            for m in ("small", "large") for r in (4, 16) for s in range(3)]
    runs = pd.DataFrame(rows)
    runs["config"] = runs["model"] + runs["rank"].astype(str)
    runs["label"], runs["command"] = runs["config"], None
    factors = ["model", "gpu", "rank"]
    design = Design(runs=runs, factors=factors, quality={"acc": True},
                    orders={f: level_order(runs[f].tolist()) for f in factors})
    table, notes = anova(design)
    assert set(table["term"]) == {"model", "rank", "Residual"}
    assert notes == ["ANOVA of acc: left out gpu (aliased with model): its levels pick out the "
                     "same runs as those terms' levels, so its effect cannot be told apart from "
                     "theirs."]


def test_integer_levels_print_without_a_decimal_point(report, answer):
    assert ",qv,8.0,300," in CSV.read_text()  # as pandas writes a column with blanks
    page = html.unescape((report / "report.html").read_text())
    assert "rank 32" in page and "rank 8" in page and not re.search(r"rank \d+\.0", page)
    comps = (report / "stats" / "comparisons.csv").read_text()
    assert "\nrank,8,32," in comps and "8.0" not in comps
    labels = stats(report, "configurations")["label"]
    assert labels.str.contains("rank 32").any() and not labels.str.contains(r"\.0\b").any()


def _priorities(row) -> list[str]:
    return row["priority"].split("; ")


def test_least_memory_within_1_percent_equals_brute_force(report):
    recs = stats(report, "recommendations")
    means = config_means(pd.read_csv(CSV)).reset_index()
    for size, mine in means.groupby("data_size"):
        top = mine["accuracy"].max()
        near = mine[(mine["accuracy"] >= top - 0.01 * top) & (mine["method"] != "baseline")]
        want = near.loc[near["gpu_mem_gb"].idxmin()]
        row = recs[(recs["data_size"] == size) & recs.apply(
            lambda r: "least gpu_mem_gb within 1% of the best accuracy" in _priorities(r),
            axis=1)]
        assert len(row) == 1
        assert row["gpu_mem_gb"].iloc[0] == pytest.approx(want["gpu_mem_gb"], rel=1e-12)
        assert row["accuracy"].iloc[0] == pytest.approx(want["accuracy"], rel=1e-12)
        assert f"rank {want['rank']:.0f}," in row["configuration"].iloc[0]


def test_rows_that_pick_one_configuration_are_merged(report):
    recs = stats(report, "recommendations")
    assert not recs.duplicated(["data_size", "configuration"]).any()
    merged = recs[recs["priority"].str.contains("; ")]
    assert len(merged) >= 2  # the best is also the best under the two largest budgets
    per_size = recs.groupby("data_size")["priority"].agg(lambda p: sum(len(x.split("; "))
                                                                     for x in p))
    assert per_size.tolist() == [1 + 4 + 2, 1 + 4 + 2]  # best, 4 budgets, 2 within-1% rows


def test_the_first_line_is_the_largest_data_size_s_best(answer):
    means = config_means(pd.read_csv(CSV)).reset_index()
    largest = means[means["data_size"] == means["data_size"].max()]
    best = largest.loc[largest["accuracy"].idxmax()]
    assert answer[0].startswith(f"Best accuracy at data size 3000: dataset {best['dataset']}, "
                                f"model {best['model']}, method {best['method']}, ")
    assert f", {number(best['accuracy'], 4)}, 95% CI" in answer[0].split(";")[0]
    assert "; at data size 300: " in answer[0]


def test_no_baseline_wins_a_resource_priority(report):
    recs = stats(report, "recommendations")
    for _, row in recs.iterrows():
        if row["configuration"].find("method baseline") >= 0:
            assert _priorities(row) == ["best accuracy"]
    # and without the rule it would have: the baseline has the least memory at each size
    means = config_means(pd.read_csv(CSV)).reset_index()
    for _, mine in means.groupby("data_size"):
        assert mine.loc[mine["gpu_mem_gb"].idxmin(), "method"] == "baseline"


def test_the_study_summary_never_names_a_baseline_best_on_a_resource(tmp_path, capsys):
    from analysis.summary import print_summary
    from tests.test_analysis_classify import make_study

    study = make_study(tmp_path)  # its untrained base has the least peak memory (200 MB)
    print_summary(study, ["accuracy", "peak_mem_mb"], num_samples=5)
    best = next(line for line in capsys.readouterr().out.splitlines()
                if line.strip().startswith("best peak_mem_mb"))
    assert "best peak_mem_mb: 300  [search/a2]" in best, best


@pytest.mark.parametrize("args, message", [
    (["--focus", "lr"], "--focus: no factor 'lr' with two or more levels; the factors: "
     "dataset, model, method, modules, rank, data_size"),
    (["--focus", ","], "--focus: name one or more factors, as A,B (the factors: dataset, "),
    (["--reference", "method=QLoRA"], "--reference: method has no level 'QLoRA'; its levels: "
     "LoRA, QLoRA-nf4, QLoRA-fp4, baseline"),
    (["--reference", "rank=32.5"], "--reference: rank has no level '32.5'; its levels: 8, 32"),
    (["--reference", "method"], "--reference: 'method' must be FACTOR=LEVEL (the factors: "
     "dataset, model, method, modules, rank, data_size)"),
    (["--reference", "seed=1"], "--reference: no factor 'seed' with two or more levels; the "
     "factors: dataset, "),
    (["--reference", "method=LoRA,method=baseline"], "--reference: method is given twice"),
])
def test_bad_focus_or_reference_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args,
                                                                       message):
    out = tmp_path / "deep" / "report"
    assert main(["report", *TABLE, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "deep").exists()


def test_a_study_s_report_checks_focus_too(tmp_path, capsys):
    from tests.test_analysis_classify import make_study

    study = make_study(tmp_path)
    out = tmp_path / "deep" / "report"
    assert main(["report", str(study), "--focus", "lr", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--focus: no factor 'lr' with two or more levels; the factors: " in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "deep").exists()


def test_too_few_pairs_for_wilcoxon_is_said_rather_than_a_minority():
    """With 5 pairs the exact signed-rank test's smallest two-sided p is 2/2^5 = 0.0625: an
    interval that excludes zero then says more than Wilcoxon can, not that a minority lost."""
    from types import SimpleNamespace

    from analysis.answer_text import _reconcile

    design = SimpleNamespace(quality={"eval_loss": False})
    row = pd.Series({"agreement": "mean only", "wilcoxon_p": 0.0625, "mean_diff": -0.04,
                     "ci_low": -0.06, "ci_high": -0.02, "effect_size": -1.0, "n_pairs": 5})
    text = _reconcile(design, row, "eval_loss")
    assert "cannot find a difference" in text and "0.062" in text and "every pair" in text
    assert "minority" not in text
    twelve = row.copy()
    twelve["n_pairs"] = 12  # a floor of 0.0005: Wilcoxon could have spoken
    many = _reconcile(design, twelve, "eval_loss")
    assert "minority" in many and "cannot" not in many
