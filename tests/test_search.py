"""The study's searcher (Optuna ask/tell behind Tune's hooks), without a Ray cluster."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

pytest.importorskip("optuna")  # the searcher: absent on a GPU machine without them (gpu-check)
pytest.importorskip("ray")
from optuna.samplers import TPESampler

from search_spaces import SpaceError, validate
from study import metrics as M
from study.search.searcher import StudySearch


def _searcher(space, objectives=("eval_loss",), **kw):
    modes = [M.mode(o) for o in objectives]
    return StudySearch(list(objectives), modes, space=space, sampler=TPESampler(seed=0), **kw)


FINAL = {"test_loss": 1.1, "final": True}


def _params(suggestion):
    """A suggestion's searched keys: without the trial seed and the study's identity of the
    trial (config_id, replicate), which tests/test_replicates.py checks."""
    if not isinstance(suggestion, dict):
        return suggestion
    return {k: v for k, v in suggestion.items() if k not in ("seed", "config_id", "replicate")}


def launched(searcher) -> list:
    """The Optuna trials that were launched (not repeats, duplicates or over-budget ones)."""
    return [t for t in searcher.study.get_trials() if "trial_dir" in t.user_attrs]


def test_search_does_not_launch_over_budget_configs_and_tells_optuna_why():
    space = {"lora": {"rank": {"choice": [1, 64]}}, "train": {"lr": {"loguniform": [1e-4, 1e-2]}}}
    seen = []

    def estimate(config):  # the whole config: the searched values and the space's fixed ones
        seen.append(config)
        return 100.0 * config["lora.rank"]

    searcher = _searcher(space, estimate_mb=estimate, max_mem_mb=1000)
    configs = [_params(searcher.suggest(f"t{i}")) for i in range(6)]
    assert all(c["lora.rank"] == 1 for c in configs)
    trials = searcher.study.get_trials()
    over = [t for t in trials if "not_launched" in t.user_attrs]
    assert over and all(t.state.name == "PRUNED" and t.values is None for t in over)
    assert all(t.constraints == {"memory_mb": 5400.0} for t in over)  # 6400 MB - 1000 MB
    launched = [t for t in trials if "trial_dir" in t.user_attrs]
    assert len(launched) == 6 and all(t.constraints["memory_mb"] == -900.0 for t in launched)
    assert ("estimated peak with its error band 6400 MB > --max-mem-mb 1000"
            in over[0].user_attrs["not_launched"])


def test_search_hand_off_pruned_fail_complete():
    searcher = _searcher({"lora": {"rank": {"choice": [1, 2, 4]}}})
    for i in range(3):
        _params(searcher.suggest(f"t{i}"))
    searcher.on_trial_result("t0", {"step": 5, "eval_loss": 2.0})
    searcher.on_trial_result("t0", {"step": 6, "eval_loss": math.nan})  # not measured: skipped
    # stopped by ASHA on its step-10 result, which Tune shows the scheduler but not the searcher
    searcher.on_trial_complete("t0", {"step": 10, "eval_loss": 2.5})
    searcher.on_trial_complete("t1", {"step": 5, "error": "non-finite loss"})
    searcher.on_trial_complete("t2", {"step": 20, "eval_loss": 1.0, **FINAL})  # its last report
    trials = launched(searcher)
    assert [t.state.name for t in trials] == ["PRUNED", "FAIL", "COMPLETE"]
    assert trials[2].value == 1.0 and trials[0].intermediate_values == {5: 2.0, 10: 2.5}


def test_multi_objective_hand_off_pruned_without_values():
    searcher = _searcher({"lora": {"rank": {"choice": [1, 2, 4]}}}, ("eval_loss", "peak_mem_mb"))
    _params(searcher.suggest("t0"))
    _params(searcher.suggest("t1"))
    searcher.on_trial_complete("t0", {"step": 10, "eval_loss": 2.5, "peak_mem_mb": 900.0})
    searcher.on_trial_complete("t1", {"step": 20, "eval_loss": 1.0, "peak_mem_mb": 800.0, **FINAL})
    trials = launched(searcher)
    assert [(t.state.name, t.values) for t in trials] == [
        ("PRUNED", None),
        ("COMPLETE", [1.0, 800.0]),
    ]


def test_a_configuration_already_run_is_answered_from_its_record_and_the_space_ends():
    from ray.tune.search import Searcher

    points = [{"lora.rank": 1}] * 2
    searcher = _searcher({"lora": {"rank": {"choice": [1, 2]}}}, points=points)
    assert _params(searcher.suggest("t0")) == {"lora.rank": 1}
    searcher.on_trial_result("t0", {"step": 5, "eval_loss": 0.7})
    searcher.on_trial_complete("t0", {"step": 10, "eval_loss": 0.5, **FINAL})
    # The second queued point repeats rank 1: told COMPLETE with 0.5, and rank 2 is launched.
    assert _params(searcher.suggest("t1")) == {"lora.rank": 2}
    trials = searcher.study.get_trials()
    assert [(t.state.name, t.value) for t in trials[:2]] == [("COMPLETE", 0.5)] * 2
    assert trials[1].user_attrs["repeat_of"] == 0
    searcher.on_trial_result("t1", {"step": 5, "eval_loss": 3.0})
    searcher.on_trial_complete("t1", {"step": 5, "eval_loss": 3.0})  # stopped by ASHA
    # Both configurations have run: the search ends at once, and says why.
    before = len(searcher.study.trials)
    assert _params(searcher.suggest("t2")) == Searcher.FINISHED
    assert len(searcher.study.trials) == before  # no flood of repeat trials at the end
    assert searcher.study.user_attrs["search_ended"] == "every configuration of the space has run"


def test_a_configuration_running_is_never_started_twice_at_once():
    """Repeats were matched among finished trials only (issue 11, bug 4)."""
    points = [{"lora.rank": 1}, {"lora.rank": 1}]
    searcher = _searcher({"lora": {"rank": {"choice": [1, 2, 4]}}}, points=points)
    first, second = _params(searcher.suggest("t0")), _params(searcher.suggest("t1"))
    assert first == {"lora.rank": 1} and second != first  # t0 still runs: rank 1 waits for it
    waiting = [t for t in searcher.study.get_trials() if "duplicate_of" in t.user_attrs]
    assert [t.state.name for t in waiting] == ["RUNNING"]
    searcher.on_trial_result("t0", {"step": 5, "eval_loss": 0.9})
    searcher.on_trial_complete("t0", {"step": 5, "eval_loss": 0.9})  # stopped by ASHA
    (told,) = [t for t in searcher.study.get_trials() if "duplicate_of" in t.user_attrs]
    assert (told.state.name, told.intermediate_values) == ("PRUNED", {5: 0.9})


def test_an_exhausted_budget_ends_the_search_and_says_so():
    """The configurations under the budget ran out while over-budget ones were never suggested:
    `suggest` raised RuntimeError after 200 tries (issue 11, bug 3)."""
    from ray.tune.search import Searcher

    space = {"lora": {"rank": {"choice": [1, 2, 32, 64]}}}
    searcher = _searcher(space, estimate_mb=lambda c: c["lora.rank"] * 100.0, max_mem_mb=1000)
    ranks = []
    for i in range(4):
        config = _params(searcher.suggest(f"t{i}"))
        if config == Searcher.FINISHED:
            break
        ranks.append(config["lora.rank"])
        searcher.on_trial_complete(f"t{i}", {"step": 10, "eval_loss": 1.0, **FINAL})
    assert sorted(ranks) == [1, 2] and config == Searcher.FINISHED
    ended = searcher.study.user_attrs["search_ended"]
    assert ended == "every configuration of the space under --max-mem-mb 1000 has run"


def test_a_resumed_search_asks_again_what_a_kill_left_running(tmp_path):
    from study import journal

    space = {"lora": {"rank": {"choice": [1, 2, 4, 8]}}}

    def searcher():
        return _searcher(space, storage=journal.storage(tmp_path), study_name="s", num_samples=3)

    first = searcher()
    done, cut = _params(first.suggest("a0")), _params(first.suggest("a1"))
    first.on_trial_complete("a0", {"step": 10, "eval_loss": 1.0, **FINAL})
    del first  # the driver is killed: a1 is RUNNING in the journal
    again = searcher()
    # its own directory
    assert _params(again.suggest("b0")) == cut and again.trial_dir("b0") == "a1"
    study = journal.load(tmp_path)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "RUNNING"] and study.user_attrs["interrupted"] == [1]
    assert journal.outcomes(study)["searched"] == 2  # the interrupted trial counts once
    again.on_trial_complete("b0", {"step": 10, "eval_loss": 2.0, **FINAL})
    third = _params(again.suggest("b1"))
    assert third not in (done, cut)
    again.on_trial_complete("b1", {"step": 10, "eval_loss": 3.0, **FINAL})
    assert _params(again.suggest("b2")) == "FINISHED"  # --num-samples 3 over the whole study


def _journal_searcher(tmp_path, space, **kw):
    from study import journal

    return _searcher(space, storage=journal.storage(tmp_path), study_name="s", **kw)


def test_interrupted_trials_go_before_the_points_left_and_keep_their_values(tmp_path):
    """With more points than --num-samples, the points left must not take the budget of the
    trials a kill interrupted (they would never resume)."""
    space = {"lora": {"rank": {"choice": [1, 2, 4, 8, 16]}}}
    points = [{"lora.rank": r} for r in (1, 2, 4, 8, 16)]
    first = _journal_searcher(tmp_path, space, points=points, num_samples=3)
    assert [_params(first.suggest(f"a{i}")) for i in range(2)] == points[:2]
    first.on_trial_result("a1", {"step": 5, "eval_loss": 0.8})
    # killed: a0 and a1 RUNNING
    again = _journal_searcher(tmp_path, space, points=points, num_samples=3)
    resumed = [_params(again.suggest(f"b{i}")) for i in range(3)]
    assert resumed == points[:3] and [again.trial_dir(f"b{i}") for i in range(2)] == ["a0", "a1"]
    assert _params(again.suggest("b3")) == "FINISHED"
    (relaunch,) = [t for t in again.study.trials if t.user_attrs.get("resumes") == 1]
    assert relaunch.intermediate_values == {5: 0.8}  # what the interrupted trial had reported


def test_a_kill_in_the_middle_of_an_ask_or_of_the_resume_loses_nothing(tmp_path):
    space = {"lora": {"rank": {"choice": [1, 2, 4, 8]}}}
    points = [{"lora.rank": 8}]
    first = _journal_searcher(tmp_path, space, points=points, num_samples=2)
    first._queue_next()  # the point is queued, then a kill cuts the ask: RUNNING, no params yet
    assert first.study.ask().params == {}
    again = _journal_searcher(tmp_path, space, points=points, num_samples=2)
    assert _params(again.suggest("b0")) == {"lora.rank": 8}  # the point, not a fresh sample
    # a resume marks b0 (RUNNING) FAIL and is killed before it asks b0 again: the next resume
    # still continues b0, in b0's directory
    marked = _journal_searcher(tmp_path, space, num_samples=2).study
    assert [t.state.name for t in marked.trials][-1] == "FAIL"
    cut = _journal_searcher(tmp_path, space, num_samples=2)
    config = _params(cut.suggest("c0"))
    assert config == {"lora.rank": 8} and cut.trial_dir("c0") == "b0"
    from study import journal

    assert journal.outcomes(journal.load(tmp_path))["searched"] == 1


def test_points_a_distribution_cannot_hold_are_refused_before_the_search():
    space = {"lora": {"rank": {"choice": [1, 2]}}, "train": {"lr": {"loguniform": [1e-4, 1e-2]}}}
    for point, message in [
        ({"lora.rank": 12}, "lora.rank=12 is not one of its choices"),
        ({"train.lr": "x"}, "train.lr='x' must be a number"),
    ]:
        with pytest.raises(SpaceError, match=message):
            validate({**space, "points_to_evaluate": [point]})
    validate({**space, "points_to_evaluate": [{"train.lr": 0.5}]})  # a reference: tried as given


def test_a_half_written_journal_line_is_cut_before_appending(tmp_path):
    from study import journal

    space = {"lora": {"rank": {"choice": [1, 2]}}}
    s = _searcher(space, storage=journal.storage(tmp_path), study_name="s")
    first = _params(s.suggest("t0"))
    path = tmp_path / "optuna.journal"
    path.write_bytes(path.read_bytes() + b'{"op_code": 5, "worker_id"')  # a kill mid-append
    assert "cut a half-written last entry" in journal.repair(tmp_path)
    assert journal.repair(tmp_path) is None
    again = _searcher(space, storage=journal.storage(tmp_path), study_name="s")
    # the interrupted t0, asked again, into t0's directory
    assert _params(again.suggest("t1")) == first
    assert [t.state.name for t in journal.load(tmp_path).trials] == ["FAIL", "RUNNING"]
    assert again.trial_dir("t1") == "t0"


def test_the_search_decides_on_the_recorded_grid_as_it_did_on_rays_classes():
    """The decisions (configuration and steps of every trial, in order) of every searcher of
    bench/search_efficiency.py, replayed on the recorded grid, equal those recorded on commit
    7aed8f6, when the search subclassed Ray's OptunaSearch and ASHAScheduler."""
    import json

    from bench.search_decisions import RECORDED, compare, decisions

    recorded = {k: v[:2] for k, v in json.loads(RECORDED.read_text()).items()}
    now = decisions(seeds=2)
    assert set(now) == set(recorded) and compare(recorded, now) == []
    changed = {k: [list(reversed(seed)) for seed in v] for k, v in now.items()}
    assert len(compare(recorded, changed)) == 2 * len(now)  # and it would see a difference


def test_a_trial_finished_before_a_crash_is_reported_again_as_final(tmp_path, monkeypatch):
    """After a driver kill, Tune may start a finished trial again: it must not retrain, and its
    re-report must say final (metrics.json of older versions lacks the marker)."""
    from types import SimpleNamespace

    import ray.tune

    from study import record
    from study.search.trainable import trainable

    trial_dir = tmp_path / "t1"
    record.write_metrics(trial_dir, {"step": 6, "eval_loss": 0.5, "test_loss": 0.6})
    record.write_status(trial_dir, record.FINISHED, step=6)
    reports = []
    context = SimpleNamespace(get_trial_name=lambda: "t1")
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: reports.append(metrics))
    trainable({"model.name": "tiny-llama"}, experiment_dir=str(tmp_path))
    (report,) = reports
    assert (report["step"], report["eval_loss"], report["final"]) == (6, 0.5, True)
    # a kill after the final report, before the study wrote "finished": the metrics say final
    record.write_status(trial_dir, record.RUNNING)
    record.write_metrics(trial_dir, {"step": 6, "eval_loss": 0.5, "final": True})
    trainable({"model.name": "tiny-llama"}, experiment_dir=str(tmp_path))
    assert len(reports) == 2 and reports[1]["final"] is True
    # and, as every report, it carries every metric (NaN where the file has none)
    import math

    from study import metrics as M

    assert set(M.QUALITY + M.RESOURCES) <= set(report) and math.isnan(report["peak_mem_mb"])


def test_the_live_table_survives_a_config_the_space_allows_but_a_trial_refuses():
    from types import SimpleNamespace

    from study.search.callbacks import LiveTable

    class Trial(SimpleNamespace):
        def __str__(self) -> str:  # a Ray trial's name: its directory in a study
            return "abcdef12"

    def trial(config):
        return Trial(config=config, last_result={}, status="RUNNING")

    table = LiveTable("/nonexistent").table(
        [trial({"method": "full", "quant.bits": 4}), trial({"lora.rank": 4, "lora.targets": "qv"})]
    )
    invalid, valid = table.splitlines()[1:]
    # after the trial, its config id and replicate (unknown here: dashes)
    assert invalid.split()[3] == "bad" and valid.split()[3:6] == ["4", "8", "qv"]


@pytest.mark.parametrize(
    "error, reason, step",
    [
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2 GB"),
         "out of memory: DefaultCPUAllocator", 0),
        (MemoryError(), "out of memory", 0),
        ("nan", "non-finite training loss (nan) at step 2", 2),
    ],
)
def test_failures_a_retry_would_repeat_end_the_trial_with_their_own_step(
    tmp_path, monkeypatch, error, reason, step
):
    """A CPU allocation failure was retried like a crash; a NaN at step 2 was recorded at step 1
    (issue 12, bug 8). Anything else still propagates, for Ray to retry."""
    import ray.tune

    from study.search import runner
    from study.search import trainable as T
    from study.trial.train import NonFiniteLossError

    if error == "nan":
        error = NonFiniteLossError("non-finite training loss (nan) at step 2", step=2)
    reports = []
    context = SimpleNamespace(get_trial_name=lambda: "t")
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: reports.append(metrics))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(runner, "run_trial", fail)
    T.trainable({"model.name": "tiny-llama"}, experiment_dir=str(tmp_path))
    (report,) = reports
    assert report["error"].startswith(reason) and report["step"] == step
    monkeypatch.setattr(
        runner, "run_trial", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x"))
    )
    with pytest.raises(RuntimeError, match="x"):
        T.trainable({"model.name": "tiny-llama"}, experiment_dir=str(tmp_path))
