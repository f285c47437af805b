"""LoRA variants as study factors end to end (issue 18, acceptance 3): a grid over lora.variant
x lora.init on the smoke-variants space, replicated, and its report's paired comparisons."""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest

from study.tune import main


@pytest.mark.slow
def test_a_grid_over_variant_and_init_compares_them_with_6_pairs_each(tmp_path):
    argv = ["--space", "smoke-variants", "--search", "grid", "--repeats", "3", "--scheduler",
            "none", "--no-baselines", "--max-concurrent", "2", "--name", "v",
            "--storage-path", str(tmp_path)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    from analysis.__main__ import main as analysis_main

    assert analysis_main(["report", str(tmp_path / "v"), "--out", str(tmp_path / "r")]) == 0
    comps = pd.read_csv(tmp_path / "r" / "stats" / "comparisons.csv")
    loss = comps[comps["metric"] == "eval_loss"].set_index("factor")
    assert (loss.loc["variant", "level_a"], loss.loc["variant", "level_b"]) == ("lora", "dora")
    assert loss.loc["variant", "n_pairs"] == 6 and loss.loc["init", "n_pairs"] == 6
    # each factor changes training: a field that never reached the loop (LoRA+'s ratio once)
    # makes every paired difference zero, and the interval empty
    assert loss.loc[["variant", "init"], "ci_low"].notna().all()
    trials = pd.read_csv(tmp_path / "r" / "trials.csv")
    finished = trials[(trials["group"] == "search") & (trials["status"] == "finished")]
    assert len(finished) == 12 and set(finished["variant"]) == {"lora", "dora"}
    dora = finished[finished["variant"] == "dora"]["trainable_params"]
    plain = finished[finished["variant"] == "lora"]["trainable_params"]
    assert dora.min() > plain.max()  # the magnitude vectors train too
