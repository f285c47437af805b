"""Our ASHA scheduler: Ray's decisions, rungs rebuilt from recorded curves, NaN as not known."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")
from study.search.asha import StudyASHA


def _asha(**kw):
    args = dict(time_attr="step", metric="eval_loss", mode="min", max_t=40, reduction_factor=2)
    return StudyASHA(**{**args, "grace": 5, **kw})


def _ray_asha(**kw):
    from ray.tune.schedulers import ASHAScheduler

    args = dict(time_attr="step", metric="eval_loss", mode="min", max_t=40, reduction_factor=2)
    return ASHAScheduler(**{**args, "grace_period": 5, **kw})


def _run(scheduler, curves: dict[str, list[dict]]) -> dict[str, int]:
    """Feed each trial's curve in turn, as Tune does; the step each trial was stopped at."""
    stopped_at = {}
    for trial_id, curve in curves.items():
        trial = SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(None, trial)
        for point in curve:
            if scheduler.on_trial_result(None, trial, point) == "STOP":
                stopped_at[trial_id] = point["step"]
                break
        scheduler.on_trial_complete(None, trial, point)
    return stopped_at


def _ended(curves: dict) -> list:
    return [(key, curve, True) for key, curve in curves.items()]


def _curves(seed: int, n: int = 16, steps=(5, 10, 20, 40), prefix: str = "t") -> dict:
    rng = random.Random(seed)
    out = {}
    for t in range(n):
        chosen = sorted(rng.sample(steps, rng.randint(1, len(steps))))  # some skip rungs
        out[f"{prefix}{t}"] = [{"step": s, "eval_loss": rng.uniform(1, 3) / s} for s in chosen]
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rf, mode", [(2, "min"), (3, "min"), (3, "max")])
def test_asha_decides_as_rays_asha(seed, rf, mode):
    curves = _curves(seed, steps=(5, 10, 15, 20, 30, 40))
    ours = _run(_asha(reduction_factor=rf, mode=mode), curves)
    rays = _run(_ray_asha(reduction_factor=rf, mode=mode), curves)
    assert ours == rays
    assert any(step < 40 for step in ours.values())  # some trials were stopped early


def test_asha_rungs_are_rebuilt_from_recorded_curves():
    past, future = _curves(0, n=12), _curves(1, n=8, prefix="new")
    live = _asha()
    stopped = _run(live, past)
    # what the trial directories hold: each curve up to where ASHA stopped it
    past = {k: [p for p in c if p["step"] <= stopped.get(k, 40)] for k, c in past.items()}
    rebuilt = _asha(replay=lambda: _ended(past))
    # every new trial is judged against the recorded rungs exactly as the live run would
    assert _run(rebuilt, future) == _run(live, future)
    fresh = _asha()
    assert _run(fresh, future) != _run(_asha(replay=lambda: _ended(past)), future)


def test_asha_treats_nan_as_not_known_yet():
    asha = _asha()
    _run(asha, {f"t{i}": [{"step": 5, "eval_loss": 0.1 * (i + 1)}] for i in range(4)})
    trial = SimpleNamespace(trial_id="nan")
    asha.on_trial_add(None, trial)
    # a NaN at the rung is neither judged nor recorded: the next finite value is
    assert asha.on_trial_result(None, trial, {"step": 5, "eval_loss": math.nan}) == "CONTINUE"
    assert asha.on_trial_result(None, trial, {"step": 6, "eval_loss": 9.0}) == "STOP"


def test_a_stop_a_kill_cut_short_is_made_when_the_trial_reports_again():
    past = {f"t{i}": [{"step": 5, "eval_loss": 0.1 * (i + 1)}] for i in range(4)}
    curves = [(k, c, True) for k, c in past.items()]
    curves.append(("cut", [{"step": 5, "eval_loss": 9.0}], False))  # its STOP never arrived
    asha = _asha(replay=lambda: curves)
    asha.on_trial_add(None, SimpleNamespace(trial_id="cut"))
    good = {"step": 10, "eval_loss": 0.01}
    assert asha.key(SimpleNamespace(trial_id="cut")) == "cut"
    assert asha.on_trial_result(None, SimpleNamespace(trial_id="cut"), good) == "STOP"



def test_a_torn_curve_line_is_left_out_of_asha_replay_and_named(tmp_path):
    """A half-written last line of curve.jsonl made --resume fail with a traceback (issue 12,
    bug 4); it is left out, the rest is replayed, and the resume's warning names the file."""
    from study import record
    from study.search.resume import damaged_lines, replay_curves

    trial = record.group_dir(tmp_path, record.SEARCH) / "t0"
    record.write_config(trial, {"lora": {"rank": 1}})
    record.write_curve(trial, [{"step": 2, "eval_loss": 1.0}, {"step": 4, "eval_loss": 0.9}])
    record.write_status(trial, record.RUNNING)
    path = record.curve_path(trial)
    path.write_bytes(path.read_bytes() + b'{"step": 6, "eval_lo')
    ((name, points, ended),) = replay_curves(tmp_path, record.SEARCH)
    assert (name, [p["step"] for p in points], ended) == ("t0", [2, 4], False)
    assert damaged_lines(tmp_path) == [f"{path}: damaged line 3 left out"]
