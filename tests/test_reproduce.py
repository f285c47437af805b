"""python -m study.reproduce: a trial re-run from its directory gives bitwise-equal losses."""

from __future__ import annotations

import json

import pytest
import torch

from study.cli import usable_cores
from study.reproduce import main
from study.trial.run import run_trial
from tests.conftest import tiny_trial


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    out = tmp_path_factory.mktemp("trial")
    run_trial(tiny_trial(), out_dir=out)
    return out


def test_reproduces_bitwise(trial, tmp_path, capsys):
    assert main([str(trial), "--out", str(tmp_path / "again")]) == 0
    text = capsys.readouterr().out
    assert "Reproduced: every loss and quality metric is equal bitwise" in text
    recorded = (trial / "curve.jsonl").read_text()
    assert (tmp_path / "again" / "curve.jsonl").read_text() == recorded


def test_changed_thread_count_is_reported_not_compared(trial, tmp_path, capsys):
    recorded = json.loads((trial / "env.json").read_text())["threads"]
    other = recorded - 1 if recorded > 1 else 2  # --threads stays within the usable cores
    if other > usable_cores():
        pytest.skip("one usable core: no other thread count to give")
    assert main([str(trial), "--out", str(tmp_path / "t"), "--threads", str(other)]) == 3
    text = capsys.readouterr().out
    assert f"environment differs: threads: recorded {recorded}, now {other}" in text
    assert "NOT like for like" in text and "Reproduced" not in text
    torch.set_num_threads(recorded)


def test_a_changed_number_is_caught(trial, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "env.json", "metrics.json"):
        (copy / name).write_text((trial / name).read_text())
    points = [json.loads(line) for line in (trial / "curve.jsonl").read_text().splitlines()]
    points[0]["eval_loss"] = float(points[0]["eval_loss"]) * (1 + 1e-12) + 1e-12  # one ulp-ish
    (copy / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    assert main([str(copy), "--out", str(tmp_path / "again")]) == 1
    text = capsys.readouterr().out
    assert f"step {points[0]['step']} eval_loss: recorded" in text and "NOT reproduced" in text


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"study.reproduce: error: {tmp_path} is not a trial directory (no config.json)"


def test_a_diverging_trial_reproduces_its_failure(tmp_path, monkeypatch, capsys):
    import study.trial.train
    from study.trial.train import NonFiniteLossError

    original = study.trial.train.causal_lm_loss

    def poisoned(model, batch, reduction="mean"):  # NaN at step `at` of every run
        loss, n = original(model, batch, reduction)
        poisoned.calls += 1
        return (loss * float("nan") if poisoned.calls == poisoned.at else loss), n

    poisoned.calls, poisoned.at = 0, 5
    monkeypatch.setattr(study.trial.train, "causal_lm_loss", poisoned)
    trial = tmp_path / "trial"
    with pytest.raises(NonFiniteLossError) as err:
        run_trial(tiny_trial(), out_dir=trial)
    (trial / "status.json").write_text(json.dumps({"status": "errored", "reason": str(err.value)}))
    poisoned.calls = 0
    assert main([str(trial), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert f"both runs ended with: {err.value}" in out and "Reproduced" in out
    poisoned.calls, poisoned.at = 0, 2  # now it fails before the recorded step 3
    assert main([str(trial), "--out", str(tmp_path / "third")]) == 1
    assert "outcome: recorded non-finite training loss (nan) at step 5, re-run non-finite" in (
        capsys.readouterr().out
    )
    (trial / "status.json").unlink()  # no recorded failure: a finished-looking trial
    poisoned.calls = 0
    assert main([str(trial), "--out", str(tmp_path / "fourth")]) == 1
    assert "outcome: recorded no error, re-run non-finite" in capsys.readouterr().out


def test_attention_kernel_and_compile_choice_are_like_for_like_conditions():
    """A record from before env.json kept them (eager, the model's default kernel) matches an
    eager run; a change of kernel or of the compile choice is named as a cause of differences."""
    from study.reproduce import environment_differences

    old = {"threads": 2, "device": "cpu"}
    eager = {**old, "attn_implementation": "sdpa", "compile": {"chosen": "off"}}
    assert environment_differences(old, eager) == []
    compiled = {**eager, "compile": {"asked": "auto", "chosen": "on"}}
    assert environment_differences(old, compiled) == [
        "train.compile chose: recorded off, now on"]
    assert environment_differences(eager, {**eager, "attn_implementation": "eager"}) == [
        "attn_implementation: recorded 'sdpa', now 'eager'"]
