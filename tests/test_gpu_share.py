"""--gpus-per-trial auto: the K trials per GPU that make gpu-check measured fastest, chosen from
fake measurements (no GPU needed): the best K, ties to the smaller K, a missing file, another
GPU's measurement and a damaged file (named and skipped) each give 1 with one line on stderr,
no CUDA gives 0, and a bad value is one line and exit 2."""

from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig, Qwen2Config

from study.search import gpu_share
from study.search.options import parse_options

H100 = "NVIDIA H100 80GB HBM3"
QWEN = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936)


def _measured(path, rates, gpu=H100, config=QWEN, batch=8, seq_len=512):
    gpu_share.write_measurement(path, gpu, gpu_share.model_key(config), batch, seq_len, rates,
                                source="test")


@pytest.fixture
def on_gpu(monkeypatch):
    """This machine has a GPU of that name, whatever it really has."""
    monkeypatch.setattr(gpu_share, "cuda_device", lambda: H100)


@pytest.mark.parametrize("rates, best", [
    ({1: 1000.0, 2: 1800.0, 4: 2100.0}, 4),
    ({1: 1000.0, 2: 1800.0, 4: 1700.0, 8: 900.0}, 2),
    ({1: 1000.0, 2: 1500.0, 4: 1500.0}, 2),   # an exact tie: the smaller K
    ({1: 1000.0, 2: 1015.0, 4: 1019.0}, 1),   # within MIN_GAIN of K=1: noise, not a gain
    ({2: 700.0}, 2),
])
def test_the_best_k_wins_and_ties_go_to_the_smaller_k(rates, best):
    assert gpu_share.best_k(rates) == best


def test_auto_is_one_over_the_best_k_of_this_gpu_and_model(tmp_path, on_gpu, capsys):
    path = tmp_path / "gpu_share.json"
    _measured(path, {1: 1000.0, 2: 1900.0, 4: 2600.0, 8: 2610.0})
    _measured(path, {1: 1000.0, 2: 4000.0}, gpu="NVIDIA A100-SXM4-80GB")  # another GPU's
    assert gpu_share.resolve("auto", [QWEN], 8, 512, path) == 0.25
    out, err = capsys.readouterr()
    assert err == "" and "--gpus-per-trial auto: 0.25 (4 trials per NVIDIA H100" in out
    # a smaller batch uses the larger batch's measurement; a larger one has none
    assert gpu_share.resolve("auto", [QWEN], 4, 128, path) == 0.25
    assert gpu_share.resolve("auto", [QWEN], 16, 512, path) == 1.0
    assert "batch 16 x 512" in capsys.readouterr().err


def test_several_models_take_the_smallest_share(tmp_path, on_gpu):
    path = tmp_path / "gpu_share.json"
    small = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=259)
    _measured(path, {1: 1000.0, 2: 1900.0, 4: 2600.0})
    _measured(path, {1: 100.0, 2: 300.0, 4: 700.0, 8: 1500.0}, config=small)
    assert gpu_share.resolve("auto", [small], 8, 512, path) == 0.125
    assert gpu_share.resolve("auto", [QWEN, small], 8, 512, path) == 0.25


@pytest.mark.parametrize("case", ["missing", "other gpu", "other model", "damaged", "not a dict"])
def test_no_usable_measurement_means_one_gpu_per_trial_said_in_one_line(case, tmp_path, on_gpu,
                                                                        capsys):
    path = tmp_path / "gpu_share.json"
    if case == "other gpu":
        _measured(path, {1: 1000.0, 2: 1900.0}, gpu="NVIDIA L4")
    elif case == "other model":
        _measured(path, {1: 1000.0, 2: 1900.0}, config=Qwen2Config(num_hidden_layers=2))
    elif case == "damaged":
        path.write_text('{"x": {"gpu": "NVIDIA H1')  # a write cut short
    elif case == "not a dict":
        path.write_text(json.dumps([1, 2]))
    assert gpu_share.resolve("auto", [QWEN], 8, 512, path) == 1.0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, lines
    assert "make gpu-check" in lines[0] and "using 1 GPU per trial" in lines[0]
    if case in ("damaged", "not a dict"):
        assert f"{path} is damaged" in lines[0] and "skipped" in lines[0]
    else:
        assert H100 in lines[0] and "batch 8 x 512" in lines[0]


def test_a_damaged_entry_is_left_out_and_the_good_ones_count(tmp_path, on_gpu):
    path = tmp_path / "gpu_share.json"
    _measured(path, {1: 1000.0, 2: 1900.0})
    data = json.loads(path.read_text())
    data["junk"] = {"gpu": H100, "model": "x", "batch": 8, "seq_len": 512,
                    "tokens_per_s": {"1": "fast"}}
    path.write_text(json.dumps(data))
    assert set(gpu_share.read_measurements(path)) == {
        gpu_share.entry_key(H100, gpu_share.model_key(QWEN), 8, 512)}
    assert gpu_share.resolve("auto", [QWEN], 8, 512, path) == 0.5
    _measured(path, {1: 1000.0})  # re-measured: the entry is replaced, the file stays valid
    assert gpu_share.resolve("auto", [QWEN], 8, 512, path) == 1.0


def test_without_cuda_auto_is_zero_and_numbers_pass_through(tmp_path, monkeypatch, capsys):
    path = tmp_path / "gpu_share.json"
    _measured(path, {1: 1000.0, 2: 1900.0})
    monkeypatch.setattr(gpu_share, "cuda_device", lambda: None)
    assert gpu_share.resolve("auto", [QWEN], 8, 512, path) == 0.0
    assert gpu_share.resolve(0.5, [QWEN], 8, 512, path) == 0.5
    assert gpu_share.resolve(2, [QWEN], 8, 512, path) == 2.0
    assert capsys.readouterr() == ("", "")


def test_the_flag_takes_a_number_or_auto():
    assert parse_options(["--gpus-per-trial", "auto"]).gpus_per_trial == "auto"
    assert parse_options(["--gpus-per-trial", "AUTO"]).gpus_per_trial == "auto"
    assert parse_options(["--gpus-per-trial", "0.25"]).gpus_per_trial == 0.25
    assert parse_options([]).gpus_per_trial is None


@pytest.mark.parametrize("value, message", [
    ("abc", "argument --gpus-per-trial: expected a number >= 0 or auto, got 'abc'"),
    ("-1", "--gpus-per-trial must be a number >= 0 or auto, got -1"),
    ("nan", "--gpus-per-trial must be a number >= 0 or auto, got nan"),
])
def test_a_bad_value_is_one_line_and_exit_2(value, message, tmp_path, capsys):
    from study.tune import main

    storage = tmp_path / "res"
    try:  # argparse exits by itself; the plan's UsageError is main's return value
        code = main(["--space", "smoke", "--storage-path", str(storage), "--gpus-per-trial",
                     value])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not storage.exists()


def test_the_plan_resolves_auto_for_the_study_model_and_ray_gets_it(tmp_path, monkeypatch,
                                                                    on_gpu, capsys):
    from study.search.plan import plan_study
    from study.trial.models import load_model
    from study.tune import parse_args

    monkeypatch.setattr(gpu_share, "cache_file", lambda: tmp_path / "gpu_share.json")
    tiny = load_model("tiny-llama")[0].config
    _measured(tmp_path / "gpu_share.json", {1: 500.0, 2: 900.0}, config=tiny, batch=4,
              seq_len=128)  # the smoke space's batch shape
    argv = ["--space", "smoke", "--storage-path", str(tmp_path / "r"), "--gpus-per-trial", "auto"]
    plan = plan_study(parse_args(argv), argv)
    assert plan.gpus_per_trial == 0.5 and plan.forked is False  # a GPU study forks no trials
    assert "--gpus-per-trial auto: 0.5" in capsys.readouterr().out
    pytest.importorskip("ray")
    from study.search.tuner import _resources

    assert _resources(plan)["gpu"] == 0.5
    monkeypatch.setattr(gpu_share, "cuda_device", lambda: None)  # no CUDA: 0, and trials fork
    plan = plan_study(parse_args(argv), argv)
    assert plan.gpus_per_trial == 0.0 and _resources(plan)["gpu"] == 0.0


@pytest.mark.parametrize("leaf, largest", [
    (16, 16), ({"choice": [4, 16, 8]}, 16), ({"randint": [2, 12]}, 12),
    ({"loguniform": [1.0, 64.0]}, 8), (None, 8),
])
def test_the_plan_looks_up_the_largest_batch_the_space_can_draw(leaf, largest):
    from study.search.plan import _largest

    leaves = {} if leaf is None else {"train.batch_size": leaf}
    assert _largest(leaves, "train.batch_size", 8) == largest
