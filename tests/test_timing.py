"""The time estimate: its terms count what the trial computes; the summary compares it with
each finished trial's measured time."""

from __future__ import annotations

import pytest

from study.cost import timing
from study.cost.estimate import model_facts
from tests.conftest import tiny_trial


@pytest.fixture(scope="module")
def facts():
    return model_facts(tiny_trial(), ["qv", "all-linear"])[0]


def test_terms_scale_with_the_work(facts):
    speed = 1e10
    base = timing.terms(tiny_trial(), facts, speed)
    longer = timing.terms(tiny_trial(**{"train.steps": 12}), facts, speed)
    # twice the steps of the same size: twice the training compute, calls and updates
    # (12 steps of batch 4 over 34 examples repeat epochs: the padded sizes differ a little)
    assert longer["train.compute"] == pytest.approx(2 * base["train.compute"], rel=0.15)
    assert longer["train.calls"] == 2 * base["train.calls"]
    assert longer["train.optimizer"] == pytest.approx(2 * base["train.optimizer"])
    assert timing.terms(tiny_trial(), facts, 2 * speed)["train.compute"] == pytest.approx(
        base["train.compute"] / 2)  # a machine twice as fast computes in half the time
    assert base["train.dequant"] == 0 < timing.terms(
        tiny_trial(**{"quant.bits": 4}), facts, speed)["train.dequant"]
    full = timing.terms(tiny_trial(method="full"), facts, speed)
    assert full["train.compute"] > base["train.compute"]  # weight gradients too
    assert full["train.optimizer"] > 5 * base["train.optimizer"]  # every parameter
    none = timing.terms(tiny_trial(method="base"), facts, speed)
    assert none["train.compute"] == 0 and none["eval.compute"] > 0


def test_cpu_autocast_counts_the_casts_of_float_weights_only(facts):
    speed = 1e10
    bf16 = timing.terms(tiny_trial(**{"train.dtype": "bf16"}), facts, speed)
    # each forward casts every float linear weight once: linear weights x micro-batches
    batches = timing.workload(tiny_trial(), facts.tokenizer).train.count
    assert bf16["train.casts"] == pytest.approx(facts.linear_params * batches / 1e9)
    assert timing.terms(tiny_trial(**{"train.dtype": "fp32"}), facts, speed)["train.casts"] == 0
    assert timing.terms(tiny_trial(**{"train.dtype": "bf16", "quant.bits": 4}), facts,
                        speed)["train.casts"] == 0  # dequantized instead (train.dequant)


def test_a_compiled_trial_adds_the_measured_compile_and_auto_adds_none(facts):
    speed = 1e10
    off = timing.trial_time(tiny_trial(), facts, speed)
    on = timing.trial_time(tiny_trial(**{"train.compile": "on"}), facts, speed)
    auto = timing.trial_time(tiny_trial(**{"train.compile": "auto"}), facts, speed)
    assert on.other_s - off.other_s == pytest.approx(timing.COEFFICIENTS["other.compile"])
    assert auto == off  # compiled only where a cached verdict says it repays
    assert timing.terms(tiny_trial(method="base", **{"train.compile": "on"}), facts,
                        speed)["other.compile"] == 0  # nothing trained, nothing compiled


def test_grouped_batches_cost_less_than_padded_ones(facts):
    speed = 1e10
    pad = timing.terms(tiny_trial(**{"train.steps": 12}), facts, speed)
    group = timing.terms(tiny_trial(**{"train.steps": 12, "train.batching": "group"}), facts,
                         speed)
    assert group["train.compute"] < pad["train.compute"]  # the real, less padded, batches


def test_the_summary_compares_estimated_and_measured_time(tmp_path, capsys):
    from analysis.summary import _print_durations

    rows = [{"group": "search", "trial": f"t{i}", "config": tiny_trial().to_dict(),
             "metrics": {"trial_s": seconds}} for i, seconds in enumerate((10.0, 20.0))]
    _print_durations(rows, lambda config: 15.0)
    out = capsys.readouterr().out
    assert "+50%" in out and "-25%" in out and "median |error| 38%" in out
