"""A classify study whose space chooses the model: it runs through study.tune (Ray, the Optuna
searcher, ASHA), gives each model its own baselines and estimates, and its report keeps the two
models apart."""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest
import yaml

from study import record

pytest.importorskip("ray")

MODELS = ["tiny-llama", "tiny-qwen2"]


@pytest.fixture(scope="module")
def two_model_study(tmp_path_factory):
    from study.tune import main

    tmp = tmp_path_factory.mktemp("classify_study")
    rows = [{"text": f"{label} note {i} " + "pad " * (i % 3), "label": label}
            for i in range(30) for label in ("red", "green", "blue")]
    pd.DataFrame(rows).to_csv(tmp / "colours.csv", index=False)
    space = {
        "model": {"name": {"choice": MODELS}},
        "data": {"task": "classify", "source": str(tmp / "colours.csv"), "size": 24,
                 "eval_size": 15, "test_size": 15, "seq_len": 32},
        "lora": {"rank": {"choice": [2, 4]}, "targets": {"choice": ["qv", "qkv"]}},
        "quant": {"scheme": {"choice": [16, "nf4"]}},
        "train": {"steps": 4, "batch_size": 4, "lr": 0.01, "warmup": 1, "dtype": "fp32"},
        "eval": {"every": 2, "latency_prompts": 1},
        "points_to_evaluate": [{"model.name": m, "lora.rank": 2, "lora.targets": "qkv",
                                "quant.scheme": 16} for m in MODELS],
    }
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    argv = ["--space", str(tmp / "space.yaml"), "--num-samples", "2", "--storage-path",
            str(tmp / "results"), "--name", "two", "--objective", "accuracy,peak_mem_mb"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0, out.getvalue()
    return tmp / "results" / "two", out.getvalue()


def test_each_model_runs_with_its_own_baselines(two_model_study):
    study, _ = two_model_study
    searched = [record.read_config(d)["model"]["name"]
                for d in record.trial_dirs(study, record.SEARCH)]
    assert sorted(searched) == MODELS  # the two points tried first, one per model
    baselines = [(record.read_config(d)["model"]["name"], record.read_config(d)["method"])
                 for d in record.trial_dirs(study, record.BASELINES)]
    assert sorted(baselines) == sorted((m, k) for m in MODELS for k in ("base", "full"))
    for d in record.trial_dirs(study, record.SEARCH):
        metrics = record.read_metrics(d)
        assert record.is_final(metrics) and 0 <= metrics["test_accuracy"] <= 1
        assert record.read_labels(d)["labels"] == ["blue", "green", "red"]


def test_the_analysis_separates_the_models(two_model_study):
    """(The report's figures and tables of two models: tests/test_analysis_classify.py.)"""
    from analysis.figure_data import pareto_info
    from analysis.load import load_studies
    from analysis.selection import label, several_models

    study, stdout = two_model_study
    trials = load_studies([study]).trials
    assert set(trials["model"]) == set(MODELS) and several_models(trials)
    info = pareto_info(trials, "peak_mem_mb", "accuracy")
    assert info.models == MODELS
    labels = {label(row, model=True) for _, row in trials.iterrows()}
    assert any(x.startswith("tiny-llama") and "untrained head" in x for x in labels)
    assert any(x.startswith("tiny-qwen2") and "untrained head" in x for x in labels)
    assert "accuracy" in stdout  # the end-of-study summary ranks by the first objective
