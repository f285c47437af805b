"""--repeats, --search and --scheduler on the searcher, without Ray's controller: Tune's hooks
(suggest / on_trial_result / on_trial_complete) fed recorded results, the Optuna journal read
back with Optuna's own API. The end-to-end study is tests/test_replicates_study.py."""

from __future__ import annotations

import math
from unittest import mock

import pytest

pytest.importorskip("optuna")  # the searcher: absent on a GPU machine without them (gpu-check)
pytest.importorskip("ray")
from search_spaces import load_space
from study import journal
from study.config import TrialConfig
from study.search import replicates as R
from study.search.samplers import check_search, make_sampler, startup_trials
from study.search.searcher import StudySearch, make_search

SPACE = {"lora": {"rank": {"choice": [2, 8]}, "targets": {"choice": ["qv", "all-linear"]}}}


def final(value: float, step: int = 6, **more) -> dict:
    return {"step": step, "eval_loss": value, "final": True, **more}


def searcher(space=SPACE, repeats=3, mode="tpe", storage=None, **kw) -> StudySearch:
    return StudySearch(["eval_loss"], ["min"], space=space, repeats=repeats, storage=storage,
                       study_name="s" if storage else None,
                       sampler=make_sampler(mode, space, seed=0, num_samples=kw.get("num_samples")),
                       **kw)


def params(suggestion: dict) -> dict:
    return {k: v for k, v in suggestion.items() if k.startswith("lora.")}


def test_config_id_is_shared_by_seeds_and_differs_between_configurations():
    a = TrialConfig.from_dict({"lora.rank": 8, "seed": 0})
    assert a.config_id() == TrialConfig.from_dict({"lora.rank": 8, "seed": 5}).config_id()
    assert a.config_id() != TrialConfig.from_dict({"lora.rank": 2}).config_id()
    assert len(a.config_id()) == 12 and int(a.config_id(), 16) >= 0


def test_each_configuration_runs_k_times_with_its_seeds_and_optuna_is_told_the_mean():
    s = searcher(space={**SPACE, "seed": 10})
    runs = [s.suggest(f"t{i}") for i in range(3)]
    assert [r["seed"] for r in runs] == [10, 11, 12] and [r["replicate"] for r in runs] == [0, 1, 2]
    assert len({r["config_id"] for r in runs}) == 1 and len({str(params(r)) for r in runs}) == 1
    assert runs[0]["config_id"] == TrialConfig.from_dict({**params(runs[0])}).config_id()
    (trial,) = s.study.trials  # asked once for the three
    for i, (value, early) in enumerate([(1.0, 4.0), (2.0, 5.0), (4.5, 6.0)]):
        s.on_trial_result(f"t{i}", {"step": 3, "eval_loss": early})
        s.on_trial_complete(f"t{i}", final(value))
        state = s.study.trials[0].state.name
        assert state == ("COMPLETE" if i == 2 else "RUNNING")  # told when all three ended
    (trial,) = s.study.trials
    assert trial.value == pytest.approx(2.5) and trial.intermediate_values == {
        3: pytest.approx(5.0), 6: pytest.approx(2.5)}
    recorded = trial.user_attrs["replicates"]
    assert [r["dir"] for r in recorded] == ["t0", "t1", "t2"]
    assert [r["values"] for r in recorded] == [[1.0], [2.0], [4.5]]
    nxt = s.suggest("t3")  # the next configuration, counted once toward --num-samples
    assert params(nxt) != params(runs[0]) and nxt["replicate"] == 0 and nxt["seed"] == 10


@pytest.mark.parametrize(
    "ends, state, value, steps",
    [
        # stopped by ASHA at different rungs: PRUNED, the mean at the steps both reached (and
        # Optuna's value of a pruned trial: its last intermediate value)
        ([[(2, 3.0), (4, 2.0)], [(2, 5.0)]], "PRUNED", 4.0, {2: 4.0}),
        # one finished: COMPLETE with the mean of the finished ones only
        ([[(2, 3.0), (4, 2.0, True)], [(2, 5.0)]], "COMPLETE", 2.0, {2: 4.0}),
        # an error and a stop: PRUNED on the one that did not error
        ([[(2, 3.0), (4, 2.0)], "error"], "PRUNED", 2.0, {2: 3.0, 4: 2.0}),
        (["error", "error"], "FAIL", None, {}),
    ],
)
def test_with_asha_each_replicate_is_judged_alone_and_optuna_gets_one_outcome(
    ends, state, value, steps
):
    s = searcher(repeats=2)
    for i in range(len(ends)):
        s.suggest(f"t{i}")
    for i, end in enumerate(ends):
        if end == "error":
            s.on_trial_complete(f"t{i}", {"step": 2, "error": "non-finite loss"})
            continue
        *seen, last = end
        for step, loss in seen:
            s.on_trial_result(f"t{i}", {"step": step, "eval_loss": loss})
        # the result ASHA stopped it on (or its final one) reaches only on_trial_complete
        s.on_trial_complete(f"t{i}", {"step": last[0], "eval_loss": last[1],
                                      **({"final": True} if len(last) == 3 else {})})
    (trial,) = s.study.trials
    assert trial.state.name == state and trial.value == value
    assert trial.intermediate_values == steps
    if state == "FAIL":
        assert trial.user_attrs["error"].startswith("all 2 replicates failed")


def test_a_kill_mid_configuration_resumes_each_replicate_exactly_once(tmp_path):
    store = journal.storage(tmp_path)
    first = searcher(storage=store)
    a0, a1 = first.suggest("a0"), first.suggest("a1")
    first.on_trial_complete("a0", final(1.0))
    del first  # killed: a1 was running, replicate 2 never started
    again = searcher(storage=journal.storage(tmp_path))
    b0, b1 = again.suggest("b0"), again.suggest("b1")
    assert (b0["seed"], again.trial_dir("b0")) == (1, "a1")  # replicate 1, in its own directory
    assert (b1["seed"], again.trial_dir("b1")) == (2, "b1")  # replicate 2, fresh
    assert params(b0) == params(b1) == params(a0) and b0["config_id"] == a1["config_id"]
    again.on_trial_complete("b0", final(2.0))
    again.on_trial_complete("b1", final(6.0))
    study = journal.load(tmp_path)
    (done,) = [t for t in journal.launched(study)]
    assert done.state.name == "COMPLETE" and done.value == pytest.approx(3.0)  # a0, b0, b1
    assert [r["dir"] for r in done.user_attrs["replicates"]] == ["a0", "a1", "b1"]
    assert study.user_attrs["interrupted"] == [0]


def test_a_kill_after_the_last_replicate_but_before_the_tell_loses_nothing(tmp_path):
    first = searcher(storage=journal.storage(tmp_path), repeats=2)
    first.suggest("a0"), first.suggest("a1")
    first.on_trial_complete("a0", final(1.0))
    with mock.patch("study.search.searcher.tell_outcome", side_effect=KeyboardInterrupt), \
            pytest.raises(KeyboardInterrupt):
        first.on_trial_complete("a1", final(3.0))  # its outcome is recorded, the tell is cut
    again = searcher(storage=journal.storage(tmp_path), repeats=2)
    nxt = again.suggest("b0")  # the cut configuration is told at once, from the journal
    study = journal.load(tmp_path)
    (told,) = [t for t in journal.launched(study) if t.state.name == "COMPLETE"]
    assert told.value == pytest.approx(2.0) and again.trial_dir("b0") == "b0"
    assert nxt["replicate"] == 0 and params(nxt) != told.params


def test_grid_runs_every_point_once_per_replicate_across_a_kill(tmp_path):
    space = load_space("smoke-grid")
    first = searcher(space=space, repeats=2, mode="grid", storage=journal.storage(tmp_path))
    seen = []
    for i in range(3):  # point 1 (both replicates), point 2 (its first), then the kill
        seen.append(first.suggest(f"a{i}"))
    first.on_trial_complete("a0", final(1.0))
    first.on_trial_complete("a1", final(1.0))
    first.on_trial_complete("a2", final(1.0))
    seen.append(first.suggest("a3"))  # point 2's second replicate starts; killed while it runs
    del first
    again = searcher(space=space, repeats=2, mode="grid", storage=journal.storage(tmp_path))
    for i in range(9):
        run = again.suggest(f"b{i}")
        if run == "FINISHED":
            break
        seen.append(run)
        again.on_trial_complete(f"b{i}", final(1.0 + i))
    assert run == "FINISHED"
    launched = {(str(sorted(params(r).items())), r["replicate"]) for r in seen}
    dirs = [again.trial_dir(f"b{i}") for i in range(i)]
    assert "a3" in dirs  # the interrupted replicate continued in its directory
    points = {str(sorted(params(r).items())) for r in seen}
    assert len(points) == 4 and len(launched) == 8  # 4 points x 2 replicates, each once
    study = journal.load(tmp_path)
    assert sorted(t.state.name for t in journal.launched(study)) == ["COMPLETE"] * 4
    assert study.user_attrs["search_ended"] == "every configuration of the space has run"


def test_grid_over_a_continuous_domain_is_refused_and_random_gp_accept_it():
    smoke = load_space("smoke")
    assert "train.lr is continuous" in check_search("grid", smoke)
    assert check_search("grid", load_space("smoke-grid")) is None
    for mode in ("random", "gp", "tpe"):
        assert check_search(mode, smoke) is None
    with pytest.raises(ValueError, match="continuous"):
        make_sampler("grid", smoke, seed=0)


def test_after_its_random_start_the_gp_sampler_proposes_from_its_own_model():
    """The GP's relative sampling (its model of the objective), not the independent random
    sampler, chooses every configuration after the start-up trials."""
    from optuna.samplers import GPSampler

    space = {"lora": {"rank": {"choice": [1, 2, 4, 8, 16]}},
             "train": {"lr": {"loguniform": [1e-4, 1e-1]}}}
    proposed = []
    original = GPSampler.sample_relative

    def spy(self, study, trial, search_space):
        out = original(self, study, trial, search_space)
        proposed.append((len(study.trials) - 1, out))
        return out

    with mock.patch.object(GPSampler, "sample_relative", spy):
        s, scheduler = make_search(["eval_loss"], space=space, seed=0, max_t=6, grace=2,
                                   reduction_factor=2, num_samples=8, search="gp",
                                   scheduler="none")
        assert scheduler is None
        startup = startup_trials(8)
        for i in range(5):
            run = s.suggest(f"t{i}")
            loss = abs(math.log10(run["train.lr"]) + 2) + 0.01 * run["lora.rank"]
            s.on_trial_complete(f"t{i}", final(loss))
    model_made = [out for number, out in proposed if number >= startup]
    assert len(model_made) == 2 and all(set(out) == {"lora.rank", "train.lr"} for out in model_made)
    trials = s.study.trials
    assert [t.params for t in trials[startup:]] == model_made  # what ran is what the GP chose
    assert all(not out for number, out in proposed if number < startup)  # random before


def test_random_search_runs_and_the_scheduler_can_be_left_out():
    s, asha = make_search(["eval_loss"], space=SPACE, seed=1, max_t=6, grace=2,
                          reduction_factor=2, search="random", repeats=1)
    assert asha is not None and s.suggest("t0")["replicate"] == 0


def test_the_outcome_rules_on_their_own():
    def run(state, values=None, steps=None):
        return R.Run("d", state, values, steps or {})

    both = [run("COMPLETE", [1.0, 10.0], {2: 5.0}), run("COMPLETE", [3.0, 30.0], {2: 7.0})]
    assert R.outcome(both, 2) == ("COMPLETE", [2.0, 20.0], {2: 6.0})
    assert R.outcome([run("FAIL"), run("FAIL")], 1) == ("FAIL", None, {})
    record = run("PRUNED", None, {2: 1.5}).to_record()
    assert R.Run.from_record(record) == run("PRUNED", None, {2: 1.5})
    assert R.restore([record, None, "damaged"], 3)[1:] == [R.Run(), R.Run()]


def test_a_study_trial_s_identity_never_reaches_its_config():
    from study.search.runner import trial_config

    tagged = R.seeded({"lora.rank": 8}, seed=3, replicate=2, config_id="abc")
    assert trial_config(tagged).seed == 5 and trial_config(tagged).lora.rank == 8
    baseline = {"baseline": {**TrialConfig().to_dict(), "replicate": 1, "config_id": "x"}}
    assert trial_config(baseline) == TrialConfig()


def test_an_unseeded_base_runs_once_and_a_classifiers_base_each_replicate():
    from study.search.replicates import baseline_repeats

    def run(method, task):
        return {"method": method, "data": {"task": task}}

    assert baseline_repeats(run("base", "skills"), 5) == 1  # same model, same examples
    assert baseline_repeats(run("base", "classify"), 5) == 5  # its score head is drawn
    assert baseline_repeats(run("full", "skills"), 5) == 5
