"""The study's searcher, scheduler and memory estimate, without a Ray cluster."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from ray import tune

from search_spaces import SpaceError, load_space, to_tune, tune_points, validate
from study.estimate import estimate_peak_mb
from study.search import StudyASHA, StudySearch


def _asha(**kw):
    return StudyASHA(
        time_attr="step",
        metric="eval_loss",
        mode="min",
        max_t=40,
        grace_period=5,
        reduction_factor=2,
        **kw,
    )


def test_asha_rungs_are_rebuilt_from_recorded_curves():
    rng = random.Random(0)
    live = _asha()
    curves = {}
    for t in range(12):
        trial = SimpleNamespace(trial_id=f"t{t}")
        live.on_trial_add(None, trial)
        curves[trial.trial_id] = []
        for step in (5, 10, 20, 40):
            point = {"step": step, "eval_loss": rng.uniform(1, 3) / step}
            curves[trial.trial_id].append(point)
            if live.on_trial_result(None, trial, point) == "STOP":
                break
        live.on_trial_complete(None, trial, point)  # as Tune does when a trial ends
    rebuilt = _asha(replay=lambda: list(curves.items()))
    rebuilt.on_trial_add(None, SimpleNamespace(trial_id="new"))
    assert rebuilt._brackets[0]._rungs == live._brackets[0]._rungs
    assert any(recorded for _, recorded in live._brackets[0]._rungs[1:])
    # a new trial is now judged against the recorded rungs, as it would have been live
    worst = {"step": 5, "eval_loss": 10.0}
    assert rebuilt.on_trial_result(None, SimpleNamespace(trial_id="new"), worst) == "STOP"
    fresh = _asha()
    assert fresh.on_trial_result(None, _added(fresh), worst) == "CONTINUE"


def _added(scheduler):
    trial = SimpleNamespace(trial_id="x")
    scheduler.on_trial_add(None, trial)
    return trial


def test_search_rejects_over_budget_configs_as_fail_and_asks_again():
    space = {"lora": {"rank": tune.choice([1, 64])}, "train": {"lr": tune.loguniform(1e-4, 1e-2)}}
    searcher = StudySearch(
        metric="eval_loss",
        mode="min",
        seed=0,
        accept=lambda c: "too big" if c["lora"]["rank"] == 64 else None,
    )
    searcher.set_search_properties("eval_loss", "min", space)
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    assert all(c["lora"]["rank"] == 1 for c in configs)
    states = [t.state.name for t in searcher.optuna_study().get_trials()]
    assert states.count("FAIL") == len(searcher.rejected) > 0
    assert {reason for _, reason in searcher.rejected} == {"too big"}


def test_search_hand_off_pruned_fail_complete():
    space = {"lora": {"rank": tune.choice([1, 2, 4])}}
    searcher = StudySearch(metric="eval_loss", mode="min", seed=0)
    searcher.set_search_properties("eval_loss", "min", space)
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_result("t0", {"step": 5, "eval_loss": 2.0})
    # stopped by ASHA on its step-10 result, which Tune shows the scheduler but not the searcher
    searcher.on_trial_complete("t0", {"step": 10, "eval_loss": 2.5})
    searcher.on_trial_complete("t1", {"step": 5, "error": "non-finite loss"})
    finished = {"step": 20, "eval_loss": 1.0, "test_loss": 1.1, "final": True}  # its last report
    searcher.on_trial_complete("t2", finished)
    trials = searcher.optuna_study().get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "FAIL", "COMPLETE"]
    assert trials[2].value == 1.0 and trials[0].intermediate_values == {5: 2.0, 10: 2.5}


def test_multi_objective_hand_off_pruned_without_values():
    space = {"lora": {"rank": tune.choice([1, 2, 4])}}
    searcher = StudySearch(metric=["eval_loss", "peak_mem_mb"], mode=["min", "min"], seed=0)
    searcher.set_search_properties(None, None, space)
    searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_complete("t0", {"step": 10, "eval_loss": 2.5, "peak_mem_mb": 900.0})
    done = {"step": 20, "eval_loss": 1.0, "peak_mem_mb": 800.0, "test_loss": 1.1, "final": True}
    searcher.on_trial_complete("t1", done)
    trials = searcher.optuna_study().get_trials()
    assert [(t.state.name, t.values) for t in trials] == [
        ("PRUNED", None),
        ("COMPLETE", [1.0, 800.0]),
    ]


def test_a_configuration_already_run_is_answered_from_its_record_not_run_again():
    from ray.tune.search import Searcher

    space = {"lora": {"rank": tune.choice([1, 2])}}
    searcher = StudySearch(
        metric="eval_loss", mode="min", seed=0, points_to_evaluate=[{"lora/rank": 1}] * 2
    )
    searcher.set_search_properties("eval_loss", "min", space)
    assert searcher.suggest("t0") == {"lora": {"rank": 1}}
    searcher.on_trial_result("t0", {"step": 5, "eval_loss": 0.7})
    finished = {"step": 10, "eval_loss": 0.5, "test_loss": 0.6, "final": True}
    searcher.on_trial_complete("t0", finished)
    # The second queued point repeats rank 1: told COMPLETE with 0.5, and rank 2 is launched.
    assert searcher.suggest("t1") == {"lora": {"rank": 2}}
    trials = searcher.optuna_study().get_trials()
    assert [(t.state.name, t.value) for t in trials[:2]] == [("COMPLETE", 0.5)] * 2
    assert searcher.repeats == 1
    searcher.on_trial_result("t1", {"step": 5, "eval_loss": 3.0})
    searcher.on_trial_complete("t1", {"step": 5, "eval_loss": 3.0})  # stopped by ASHA
    # Both configurations have run: every further suggestion is a repeat, and the search ends.
    assert searcher.suggest("t2") == Searcher.FINISHED
    repeated_pruned = [
        t for t in searcher.optuna_study().get_trials() if t.params["lora/rank"] == 2
    ]
    assert all(t.state.name == "PRUNED" for t in repeated_pruned)
    assert all(t.intermediate_values == {5: 3.0} for t in repeated_pruned)


def test_memory_estimate_grows_with_what_it_should():
    args = dict(total_params=135_000_000, batch=8, seq_len=128, hidden=576, layers=30, vocab=49152)
    e16 = estimate_peak_mb(trainable_params=2_400_000, bits=16, **args)
    e4 = estimate_peak_mb(trainable_params=2_400_000, bits=4, **args)
    full = estimate_peak_mb(trainable_params=135_000_000, bits=16, **args)
    assert e4 < e16 < full
    # a parameter that trains costs 16 bytes (weight, grad, 2 Adam moments) instead of 4
    assert full - e16 == pytest.approx(12 * (135_000_000 - 2_400_000) / 2**20, rel=0.01)
    assert estimate_peak_mb(
        trainable_params=0, bits=16, **{**args, "batch": 16}
    ) > estimate_peak_mb(trainable_params=0, bits=16, **args)


def test_builtin_spaces_are_valid_and_convert():
    for name in ("default", "smoke", "seeds-qwen2"):
        space = load_space(name)
        converted = to_tune(space)
        assert "lora.rank" in converted  # dotted TrialConfig names, the same all the way
    default = load_space("default")
    assert default["lora"]["rank"] == {"choice": [1, 2, 4, 8, 16, 32, 64]}
    assert default["quant"]["bits"] == {"choice": [4, 8, 16]}
    assert default["lora"]["targets"] == {"choice": ["qv", "qkvo", "all-linear"]}
    seeds = load_space("seeds-qwen2")  # the reports' setting: Qwen2-0.5B, wikitext-2, q and v first
    assert (seeds["model"]["name"], seeds["data"]["source"]) == ("Qwen/Qwen2-0.5B", "wikitext-2")
    assert tune_points(seeds)[0]["lora.targets"] == "qv"


@pytest.mark.parametrize(
    "space, message",
    [
        ({"lora": {"rank": {"choice": []}}}, "non-empty list"),
        ({"lora": {"rank": {"choice": [[1, 2]]}}}, "scalars or strings"),
        ({"train": {"lr": {"loguniform": [0, 1]}}}, "0 < low < high"),
        ({"lora": {"rank": {"gauss": [1, 2]}}}, "unknown distribution"),
        ({"lora": {"rank": {"choice": [0, 8]}}}, "lora.rank must be a positive integer"),
        ({"lora": {"rnk": 8}}, "unknown config key lora.rnk"),
        (
            {"lora": {"rank": {"choice": [4, 8]}}, "points_to_evaluate": [{"lora.alpha": 1}]},
            "not a searched parameter",
        ),
    ],
)
def test_bad_spaces_name_the_problem(space, message):
    with pytest.raises(SpaceError, match=message):
        validate(space)


def test_points_to_evaluate_fill_every_searched_key():
    space = {
        "lora": {"rank": {"choice": [4, 8]}, "targets": {"choice": ["qv", "all-linear"]}},
        "points_to_evaluate": [{"lora.rank": 8}],
    }
    validate(space)
    assert tune_points(space) == [{"lora.rank": 8, "lora.targets": "qv"}]


def test_a_trial_finished_before_a_crash_is_reported_again_as_final(tmp_path, monkeypatch):
    """After a driver kill, Tune may start a finished trial again: it must not retrain, and its
    re-report must say final (metrics.json of older versions lacks the marker)."""
    from types import SimpleNamespace

    import ray.tune

    from study import record
    from study.trainable import trainable

    trial_dir = tmp_path / "t1"
    record.write_metrics(trial_dir, {"step": 6, "eval_loss": 0.5, "test_loss": 0.6})
    record.write_status(trial_dir, record.FINISHED, step=6)
    reports = []
    context = SimpleNamespace(get_trial_id=lambda: "t1")
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: reports.append(metrics))
    trainable({"model.name": "tiny-llama"}, experiment_dir=str(tmp_path))
    (report,) = reports
    assert (report["step"], report["eval_loss"], report["final"]) == (6, 0.5, True)
    # and, as every report, it carries every metric (NaN where the file has none)
    import math

    from study import metrics as M

    assert set(M.QUALITY + M.RESOURCES) <= set(report) and math.isnan(report["peak_mem_mb"])


def test_the_live_table_survives_a_config_the_space_allows_but_a_trial_refuses():
    from types import SimpleNamespace

    from study.callbacks import LiveTable

    def trial(config):
        return SimpleNamespace(trial_id="abcdef12", config=config, last_result={}, status="RUNNING")

    table = LiveTable("/nonexistent").table(
        [trial({"method": "full", "quant.bits": 4}), trial({"lora.rank": 4, "lora.targets": "qv"})]
    )
    invalid, valid = table.splitlines()[1:]
    assert invalid.split()[1] == "bad" and valid.split()[1:4] == ["4", "8", "qv"]
