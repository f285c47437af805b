"""python -m analysis report --table: any tool's results table analysed as a study is, and its bad
input (issue 17, acceptance 3)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.__main__ import main
from analysis.stats import COLUMNS


@pytest.fixture
def csv(tmp_path):
    """A thesis-like table: model x quant x rank x seed, accuracy, memory and time."""
    rng = np.random.default_rng(7)
    rows = []
    for model, quant, rank, seed in itertools.product(("qwen", "smol"), ("lora", "nf4"),
                                                      (4, 16), range(3)):
        rows.append({"model": model, "quant": quant, "rank": rank, "seed": seed,
                     "accuracy": 0.8 + 0.01 * (rank == 16) - 0.006 * (quant == "nf4")
                     + rng.normal(0, 0.004),
                     "gpu_gb": (4.0 if quant == "lora" else 2.5) + 0.01 * rank,
                     "minutes": 10 + rng.normal(0, 0.5)})
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


BASE = ["--quality", "accuracy:max", "--resources", "gpu_gb:min,minutes"]
ARGS = [*BASE, "--factors", "model,quant,rank", "--replicate", "seed"]


def test_table_report_reproduces_scipy_on_its_pairs(csv, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", "--table", str(csv), *ARGS, "--interactions", "quant:rank",
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"report.html", "trials.csv", "figures", "stats"}
    comps = pd.read_csv(out / "stats" / "comparisons.csv")
    assert list(comps.columns) == COLUMNS
    row = comps[(comps["factor"] == "quant") & (comps["metric"] == "accuracy")].iloc[0]
    assert (row["level_a"], row["level_b"], row["n_pairs"]) == ("lora", "nf4", 12)
    frame = pd.read_csv(csv)
    a = frame[frame["quant"] == "lora"].sort_values(["model", "rank", "seed"])["accuracy"]
    b = frame[frame["quant"] == "nf4"].sort_values(["model", "rank", "seed"])["accuracy"]
    a, b = a.to_numpy(), b.to_numpy()
    assert row["wilcoxon_p"] == pytest.approx(sps.wilcoxon(b, a).pvalue, rel=1e-9)
    assert row["median_ratio"] == pytest.approx(np.median(b / a), rel=1e-9)
    boot = sps.bootstrap((b - a,), np.mean, n_resamples=9999, method="BCa",
                         rng=np.random.default_rng(0)).confidence_interval
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(boot.low, rel=1e-9),
                                               pytest.approx(boot.high, rel=1e-9))
    page = (out / "report.html").read_text()
    assert page.index("<h2>The answer</h2>") < page.index("<h2>Recommendations</h2>")
    assert "quant nf4 keeps " in page
    assert "of quant lora&#39;s accuracy (median over 12 pairs" in page
    assert "quant:rank" in pd.read_csv(out / "stats" / "anova.csv")["term"].tolist()
    assert len(pd.read_csv(out / "trials.csv")) == 24


@pytest.mark.parametrize(
    "edit, args, message",
    [
        (None, [*BASE, "--factors", "model,lr"], "no column 'lr'; the table has model, quant"),
        (lambda f: f.assign(accuracy=f["accuracy"].astype(str).where(f.index != 3, "n/a!")),
         ARGS, "column 'accuracy' is not numeric (row 5 of the file has 'n/a!')"),
        (lambda f: f.iloc[:0], ARGS, "no rows"),
        (None, [*BASE, "--factors", "model,quant,rank"], "rows 2 and 3 have the same model, "
         "quant, rank: two runs that cannot be told apart; give --replicate COLUMN"),
        (None, [*ARGS, "--quality", "accuracy:best"], "--quality: 'accuracy:best' must be"),
        (None, [*ARGS, "--interactions", "quant:lr"], "--interactions: 'quant:lr' must name"),
    ],
)
def test_bad_tables_are_one_line_exit_2_and_nothing_written(csv, tmp_path, capsys, edit, args,
                                                            message):
    if edit is not None:
        edit(pd.read_csv(csv)).to_csv(csv, index=False)
    out = tmp_path / "deep" / "rep"
    assert main(["report", "--table", str(csv), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "deep").exists()


def test_table_flags_without_a_table_and_a_table_without_out_are_refused(csv, tmp_path, capsys):
    assert main(["report", str(tmp_path), "--factors", "rank"]) == 2
    assert "--factors describes a --table" in capsys.readouterr().err
    assert main(["report", "--table", str(csv), *ARGS]) == 2
    assert "--table needs --out DIR" in capsys.readouterr().err
