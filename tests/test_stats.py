"""The report's statistics against scipy, statsmodels and Optuna called directly, on constructed
tables with ties, zero differences, an unmatched row, missing factor values and a one-level
factor (issue 17, acceptance 1)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.answer import analyse, sentences
from analysis.design import Design, level_order
from analysis.effects import anova, importance
from analysis.recommend import picks, recommendations
from analysis.stats import COLUMNS, comparisons, configurations, level_means, pairs

TOL = dict(rel=1e-9, abs=1e-12)


def design_of(frame: pd.DataFrame, factors, quality=None, resources=None) -> Design:
    runs = frame.copy()
    runs["config"] = runs[factors].apply(lambda r: "|".join(map(str, r)), axis=1)
    runs["label"], runs["command"] = runs["config"], None
    return Design(runs=runs, factors=list(factors),
                  quality=quality or {"acc": True}, resources=resources or {"mem": False},
                  orders={f: level_order(runs[f].tolist()) for f in factors}, source="t.csv")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """rank {4, 8, 16} x bits {16, 4} x replicate 0..3, a 'variant' factor missing for bits 4
    (not applicable), a one-level factor, ties and zero differences, one unmatched row."""
    rng = np.random.default_rng(3)
    rows = []
    for rank, bits, rep in itertools.product((4, 8, 16), (16, 4), range(4)):
        acc = round(0.70 + 0.01 * np.log2(rank) - 0.004 * (bits == 4) + rng.normal(0, 0.004), 3)
        rows.append({"rank": rank, "bits": bits, "variant": "lora" if bits == 16 else None,
                     "model": "m", "replicate": rep, "acc": acc,
                     "mem": 500.0 + 4 * rank + (200 if bits == 16 else 0)})
    frame = pd.DataFrame(rows)
    # ties and zero differences in acc between rank 4 and 8 at bits 16
    same = (frame["bits"] == 16) & (frame["replicate"] < 2)
    frame.loc[same & (frame["rank"] == 8), "acc"] = frame.loc[
        same & (frame["rank"] == 4), "acc"].to_numpy()
    frame.loc[(frame["bits"] == 16) & (frame["replicate"] >= 2), "acc"] = 0.75  # ties
    frame.loc[(frame["bits"] == 16) & (frame["rank"] == 16), "acc"] = 0.76
    extra = {"rank": 32, "bits": 16, "variant": "lora", "model": "m", "replicate": 9,
             "acc": 0.9, "mem": 900.0}  # a rank with one run: pairs with nothing
    return pd.concat([frame, pd.DataFrame([extra])], ignore_index=True)


def by_hand(frame: pd.DataFrame, factor: str, a, b, metric: str, others: list[str]):
    """Pairs found by looping over rows: same other factors (None equal only to None) and
    replicate."""
    def key(row):
        return tuple(None if pd.isna(row[c]) else row[c] for c in [*others, "replicate"])

    left = {key(r): r[metric] for _, r in frame[frame[factor] == a].iterrows()}
    right = {key(r): r[metric] for _, r in frame[frame[factor] == b].iterrows()}
    common = [k for k in left if k in right]
    return np.array([left[k] for k in common]), np.array([right[k] for k in common])


def test_pairs_match_on_other_factors_and_replicate_and_missing_only_with_missing(table):
    design = design_of(table, ["rank", "bits", "variant", "model"])
    a, b = pairs(design, "rank", 4, 8, "acc")
    ha, hb = by_hand(table, "rank", 4, 8, "acc", ["bits", "variant", "model"])
    assert sorted(zip(a, b)) == sorted(zip(ha, hb)) and len(a) == 8
    assert len(pairs(design, "rank", 16, 32, "acc")[0]) == 0  # the unmatched row
    # bits 16 has variant "lora", bits 4 has none (it does not apply there): variant is no key
    # of that comparison, bits 16 averaged over its variants (one here), as without the factor
    with_variant = pairs(design, "bits", 4, 16, "acc")
    design = design_of(table, ["rank", "bits", "model"])
    without = pairs(design, "bits", 4, 16, "acc")
    assert len(without[0]) == 12
    assert sorted(zip(*with_variant)) == sorted(zip(*without))


def test_comparisons_equal_scipy_and_statsmodels_called_directly(table):
    from statsmodels.stats.multitest import multipletests

    design = design_of(table, ["rank", "bits", "model"])
    got = comparisons(design)
    assert list(got.columns) == COLUMNS
    assert "model" not in set(got["factor"])  # one level: nothing to compare
    assert not ((got["level_a"] == 16) & (got["level_b"] == 32)).any()  # 1 pair < 5
    for metric in ("acc", "mem"):
        mine = got[got["metric"] == metric].reset_index(drop=True)
        expected_p = []
        for _, row in mine.iterrows():
            others = [f for f in ("rank", "bits", "model") if f != row["factor"]]
            a, b = by_hand(table, row["factor"], row["level_a"], row["level_b"], metric, others)
            d = b - a
            assert row["n_pairs"] == len(d) >= 5
            assert row["mean_diff"] == pytest.approx(d.mean(), **TOL)
            assert row["median_ratio"] == pytest.approx(np.median(b[a != 0] / a[a != 0]), **TOL)
            if (d == 0).all():
                assert np.isnan(row["ci_low"]) and row["wilcoxon_p"] == 1.0
                assert row["effect_size"] == 0.0
                expected_p.append(1.0)
                continue
            boot = sps.bootstrap((d,), np.mean, n_resamples=9999, method="BCa",
                                 rng=np.random.default_rng(0)).confidence_interval
            np.testing.assert_allclose([row["ci_low"], row["ci_high"]], [boot.low, boot.high],
                                       rtol=1e-9, equal_nan=True)  # constant d: NaN in both
            p = sps.wilcoxon(b, a).pvalue
            assert row["wilcoxon_p"] == pytest.approx(p, **TOL)
            expected_p.append(p)
            # rank-biserial from scipy's T+ (one-sided statistic) and the total rank sum
            nz = d[d != 0]
            t_plus = sps.wilcoxon(nz, alternative="greater").statistic
            total = len(nz) * (len(nz) + 1) / 2
            assert row["effect_size"] == pytest.approx((2 * t_plus - total) / total, **TOL)
        holm = multipletests(expected_p, method="holm")[1]
        assert mine["p_holm"].to_numpy() == pytest.approx(holm, **TOL)


def test_every_difference_zero_gives_an_empty_interval_p_1_and_no_effect():
    frame = pd.DataFrame({"f": ["a"] * 5 + ["b"] * 5, "replicate": list(range(5)) * 2,
                          "acc": [0.5, 0.6, 0.7, 0.8, 0.9] * 2, "mem": [1.0] * 10})
    row = comparisons(design_of(frame, ["f"])).set_index("metric").loc["acc"]
    assert np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])
    assert (row["wilcoxon_p"], row["effect_size"], row["mean_diff"]) == (1.0, 0.0, 0.0)


def test_configuration_intervals_equal_scipy_t_interval(table):
    design = design_of(table, ["rank", "bits", "model"])
    got = configurations(design).set_index(["config", "metric"])
    for config, runs in design.runs.groupby("config"):
        x = runs["acc"].to_numpy()
        row = got.loc[(config, "acc")]
        assert row["n"] == len(x) and row["mean"] == pytest.approx(x.mean(), **TOL)
        if len(x) == 1:
            assert np.isnan(row["ci_low"]) and np.isnan(row["sd"])
        elif x.std() == 0:
            assert row["ci_low"] == row["ci_high"] == row["mean"]
        else:
            ci = sps.ttest_1samp(x, 0).confidence_interval(0.95)
            assert (row["ci_low"], row["ci_high"]) == (pytest.approx(ci.low, **TOL),
                                                       pytest.approx(ci.high, **TOL))
            assert row["sd"] == pytest.approx(x.std(ddof=1), **TOL)
    levels, points = level_means(design, "rank", "acc")
    assert levels["level"].tolist() == [4, 8, 16, 32] and len(points) == len(table)


def test_anova_equals_statsmodels_called_directly(table):
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    design = design_of(table, ["rank", "bits", "variant", "model"])
    got, notes = anova(design, [("rank", "bits")])
    data = table.dropna(subset=["acc"]).copy()
    for f in ("rank", "bits"):
        data[f] = data[f].astype(str)
    # variant ("lora" at bits 16, not applicable at bits 4) only repeats bits: left out, named
    fit = ols("acc ~ C(rank) + C(bits) + C(rank):C(bits)", data=data).fit()
    direct = sm.stats.anova_lm(fit, typ=2)
    mine = got[got["metric"] == "acc"].set_index("term")
    assert "model" not in mine.index  # one level: left out
    assert "variant" not in mine.index
    assert any("ANOVA of acc, mem: left out variant (aliased with bits)" in n for n in notes), notes
    assert mine["sum_sq"].to_numpy() == pytest.approx(direct["sum_sq"].to_numpy(), **TOL)
    assert mine.loc["rank:bits", "F"] == pytest.approx(direct.loc["C(rank):C(bits)", "F"], **TOL)


def test_importance_equals_optuna_on_the_same_in_memory_study(table):
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    design = design_of(table, ["rank", "bits", "model"])
    got, _ = importance(design)
    study = optuna.create_study(direction="maximize")
    for (rank, bits), runs in table.groupby(["rank", "bits"], sort=False):
        study.add_trial(optuna.trial.create_trial(
            params={"rank": int(rank), "bits": int(bits)},
            distributions={"rank": CategoricalDistribution([4, 8, 16, 32]),
                           "bits": CategoricalDistribution([4, 16])},
            value=float(runs["acc"].mean())))
    direct = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                   target=lambda t: -t.value)
    mine = got[(got["evaluator"] == "fanova") & (got["metric"] == "acc")]
    assert dict(zip(mine["factor"], mine["importance"])) == pytest.approx(direct, **TOL)
    assert set(got["evaluator"]) == {"fanova", "ped_anova"}


def test_recommendations_pick_what_brute_force_picks(table):
    design = design_of(table, ["rank", "bits", "model"])
    rec = picks(design).set_index("priority")
    means = table.assign(config=design.runs["config"]).groupby("config")[["acc", "mem"]].mean()
    assert rec.loc["best acc", "configuration"] == means["acc"].idxmax()
    for priority, row in rec.iterrows():
        if " with mem <= " in priority:
            budget = float(priority.rsplit(" ", 1)[1])
            fits = means[means["mem"] <= budget]
            assert row["configuration"] == fits["acc"].idxmax() and row["mem"] <= budget
    assert rec.filter(like="with mem", axis=0).shape[0] == 4


def test_without_five_pairs_the_answer_says_so_and_leads_with_what_needs_none():
    """A TPE-like study: a continuous lr, one run per configuration."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"rank": rng.choice([4, 8], 12), "lr": rng.uniform(1e-4, 1e-3, 12),
                          "replicate": 0, "acc": rng.uniform(0.5, 0.9, 12),
                          "mem": rng.uniform(100, 200, 12)})
    design = design_of(frame, ["rank"])
    design.runs["config"] = [f"c{i}" for i in range(12)]  # every configuration ran once
    design = Design(**{**design.__dict__, "matched": ["lr"]})
    found = analyse(design)
    assert not len(found.comparisons)
    said = sentences(design, found)
    assert said[0].startswith("Best acc: ")
    assert "No two levels of any factor have 5 or more matched pairs" in said[1]
    assert "lr varies continuously" in said[1] and "each configuration ran once" in said[1]
    assert len(found.recommendations) and len(found.importance)


def test_with_a_data_size_factor_each_size_gets_its_own_recommendations(table):
    frame = pd.concat([table.assign(n=100), table.assign(n=1000, acc=table["acc"] + 0.05)],
                      ignore_index=True)
    design = design_of(frame, ["rank", "bits", "model", "n"])
    design = Design(**{**design.__dict__, "data_size": "n"})
    rec = picks(design)
    assert sorted(rec["data_size"].unique()) == [100, 1000]
    for size, part in rec.groupby("data_size"):
        best = part[part["priority"] == "best acc"].iloc[0]
        means = frame[frame["n"] == size].assign(config=design.runs["config"]).groupby(
            "config")["acc"].mean()
        assert best["configuration"] == means.idxmax() and best["acc"] == pytest.approx(
            means.max(), **TOL)
    assert "least mem within 1% of the best acc" in set(rec["priority"])  # the axis too (#37)
    merged = recommendations(design)  # one row per configuration and size, its priorities
    assert not merged.duplicated(["data_size", "configuration"]).any()
    assert sorted(p for ps in merged["priority"] for p in ps.split("; ")) == sorted(
        rec["priority"])
