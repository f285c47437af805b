"""The GPU path, checked on the CPU: placement before quantization, storage dtypes, LLM.int8's
threshold, fp16 with a gradient scaler, a shared GPU's memory cap, the model's own logits."""

from __future__ import annotations

import pytest
import torch

from study.sections import QuantConfig
from study.trial import precision
from tests.conftest import tiny_trial

bnb = pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("bits", [4, 8])
def test_the_model_is_placed_before_quantizing_and_never_moved_after(bits, tmp_path, monkeypatch):
    import study.trial.models as models
    from study.trial.run import run_trial

    events = []
    place = models.place

    def recording_place(model, device):
        events.append(("place", str(device)))
        return place(model, device)

    def recording(name, fn):
        def wrapper(weight, *args, **kwargs):
            events.append((name, str(weight.device)))
            return fn(weight, *args, **kwargs)

        return wrapper

    module_to = torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        if any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in self.modules()):
            events.append(("move a quantized module", type(self).__name__))
        return module_to(self, *args, **kwargs)

    monkeypatch.setattr(models, "place", recording_place)
    monkeypatch.setattr(bnb.functional, "quantize_4bit",
                        recording("quantize", bnb.functional.quantize_4bit))
    monkeypatch.setattr(bnb.functional, "int8_vectorwise_quant",
                        recording("quantize", bnb.functional.int8_vectorwise_quant))
    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    run_trial(tiny_trial(**{"quant.bits": bits, "train.steps": 2, "eval.every": 2}),
              out_dir=tmp_path / "t")
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "place" and kinds.count("place") == 1
    assert kinds.count("quantize") >= 14  # 2 layers x 7 linears, all after the placement
    assert "move a quantized module" not in kinds  # (the 8-bit merge for latency included)
    assert {where for kind, where in events if kind == "quantize"} == {"cpu"}


def test_8bit_weights_share_their_int8_matrix_with_the_parameter():
    """What broke on CUDA: a moved Int8Params kept CB/SCB on the old device."""
    from study.trial.models import load_model

    model, _ = load_model("tiny-llama", QuantConfig(bits=8))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert layers
    for layer in layers:
        assert layer.weight.CB.data_ptr() == layer.weight.data.data_ptr()
        assert layer.weight.SCB.device == layer.weight.device
        assert layer.state.threshold == 6.0  # LLM.int8 as published, not bnb's default 0


def test_the_int8_threshold_reaches_every_layer_from_the_config(tmp_path, monkeypatch):
    import study.trial.run
    from study.trial.models import load_model

    model, _ = load_model("tiny-llama", QuantConfig(bits=8, int8_threshold=2.5))
    thresholds = {m.state.threshold for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    assert thresholds == {2.5}
    seen = {}

    def capture(name, **kwargs):
        seen.update(kwargs)
        return load_model(name, **kwargs)

    monkeypatch.setattr(study.trial.run, "load_model", capture)
    cfg = tiny_trial(**{"quant.bits": 8, "quant.int8_threshold": 0.0, "train.steps": 1,
                        "eval.every": 1})
    study.trial.run.run_trial(cfg, out_dir=tmp_path / "t")
    assert seen["quant"].int8_threshold == 0.0 and seen["device"] == torch.device("cpu")
    assert tiny_trial().quant.int8_threshold == 6.0


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "6", True])
def test_a_bad_int8_threshold_is_refused_by_name(value):
    with pytest.raises(ValueError, match="quant.int8_threshold must be a number >= 0"):
        tiny_trial(**{"quant.int8_threshold": value})


def test_4bit_layers_compute_in_the_trials_compute_dtype():
    from study.trial.models import load_model, set_compute_dtype

    model, _ = load_model("tiny-llama", QuantConfig(bits=4), compute_dtype=torch.float32)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert {m.compute_dtype for m in layers} == {torch.float32}
    set_compute_dtype(model, torch.bfloat16)
    assert {m.compute_dtype for m in layers} == {torch.bfloat16}
    assert all(m.compute_type_is_set for m in layers)  # bnb will not re-guess from an input


@pytest.mark.parametrize(
    "device, compute, method, expected",
    [
        ("cpu", "fp32", "lora", torch.float32),
        ("cpu", "bf16", "lora", torch.float32),  # bf16 on CPU is autocast only
        ("cuda", "bf16", "lora", torch.bfloat16),
        ("cuda", "fp16", "lora", torch.float16),
        ("cuda", "bf16", "base", torch.bfloat16),
        ("cuda", "fp32", "lora", torch.float32),
        ("cuda", "bf16", "full", torch.float32),  # AdamW updates fp32 master weights
    ],
)
def test_storage_dtype_per_setting(device, compute, method, expected):
    assert precision.storage_dtype(torch.device(device), compute, method) == expected


@pytest.mark.parametrize(
    "bits, quant_type, weights", [(16, "nf4", "fp32"), (8, "nf4", "int8"), (4, "fp4", "fp4")]
)
def test_env_json_records_storage_and_compute_dtypes(bits, quant_type, weights, tmp_path):
    from study import record
    from study.trial.run import run_trial

    cfg = tiny_trial(**{"quant.bits": bits, "quant.type": quant_type, "train.steps": 1,
                        "eval.every": 1})
    run_trial(cfg, out_dir=tmp_path / "t")
    env = record.read_env(tmp_path / "t")
    assert env["weights"] == weights
    assert env["float_weights"] == "fp32" and env["compute_dtype"] == "fp32"


def _no_bf16_gpu(monkeypatch):
    """A CUDA device without bf16 (a T4, a V100), faked on any machine."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(precision, "_machine_key", lambda device, shape: "fake T4")
    return torch.device("cuda")


def test_auto_chooses_fp16_with_a_scaler_on_a_gpu_without_bf16(tmp_path, monkeypatch):
    device = _no_bf16_gpu(monkeypatch)
    assert precision.candidates(device) == ["fp32", "fp16"]
    assert precision.cuda_default(device) == "fp16"
    fake = {"fp32": 4.0, "fp16": 1.0}
    choice = precision.resolve("auto", device, (8, 8, 8), tmp_path / "p.json",
                               timer=lambda shape, name, dev: fake[name])
    assert (choice.name, choice.amp, choice.scaler) == ("fp16", torch.float16, True)
    assert choice.timings_ms == fake
    with pytest.raises(ValueError, match="bf16 is not supported on this cuda"):
        precision.resolve("bf16", device, (8, 8, 8), tmp_path / "p.json")


def test_bf16_is_preferred_to_fp16_unless_clearly_faster():
    assert precision.choose({"fp32": 4.0, "bf16": 1.0, "fp16": 0.98}) == "bf16"
    assert precision.choose({"fp32": 4.0, "bf16": 1.0, "fp16": 0.5}) == "fp16"
    assert precision.choose({"fp32": 1.0, "bf16": 0.99, "fp16": 0.98}) == "fp32"
    # on CUDA a tie goes to the native 16-bit type, which halves the base's storage (seen on an
    # H200: a tiny model's launch-bound matmuls timed fp16 fastest by chance)
    launch_bound = {"fp32": 0.010, "bf16": 0.0101, "fp16": 0.0080}  # 20% apart, 2 us
    assert precision.choose(launch_bound, prefer="bf16") == "bf16"
    assert precision.choose(launch_bound) == "fp32"
    assert precision.choose({"fp32": 0.5, "bf16": 1.0, "fp16": 1.0}, prefer="bf16") == "fp32"


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="train.dtype fp16 needs a CUDA device"):
        precision.check_supported("fp16", torch.device("cpu"))


def test_fp16_training_scales_the_loss_and_keeps_the_scaler_state(monkeypatch):
    from study.trial.data import build_data
    from study.trial.models import load_model
    from study.trial.train import make_optimizer, train_loop

    scaled = []
    scale = torch.amp.GradScaler.scale

    def recording_scale(self, outputs):
        scaled.append(self.is_enabled())
        return scale(self, outputs)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", recording_scale)
    cfg = tiny_trial(**{"train.steps": 2})
    model, tokenizer = load_model("tiny-llama")
    from lora_impl import inject_lora

    inject_lora(model, "qv", cfg.lora.spec())
    data = build_data(cfg.data, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    state: dict = {}
    train_loop(model, data.train, cfg.train, 0, make_optimizer(params, cfg.train), 2,
               tokenizer.pad_token_id, every=cfg.eval.every, amp=torch.float16, scaler=state)
    assert scaled == [True, True]
    assert state["scale"] > 0 and "_growth_tracker" in state
    scaled.clear()
    train_loop(model, data.train, cfg.train, 0, make_optimizer(params, cfg.train), 1,
               tokenizer.pad_token_id, every=cfg.eval.every, amp=None, scaler={})
    assert scaled == [False]  # fp32 and bf16: no scaling


def test_a_shared_gpu_caps_the_process_at_its_share(monkeypatch):
    from study.search import runner

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: calls.append(fraction))
    assert runner.share_gpu(0.5) is True
    assert runner.share_gpu(1.0) is False and runner.share_gpu(None) is False
    assert calls == [0.5]


def test_out_of_memory_on_a_shared_gpu_is_reported_as_such(tmp_path, monkeypatch):
    from study import record
    from study.search import runner

    reports = []
    monkeypatch.setattr(runner, "share_gpu", lambda fraction: fraction is not None)
    monkeypatch.setenv("LORA_STUDY_FAULT", "oom@1")
    cfg = tiny_trial(**{"train.steps": 2, "eval.every": 2}).to_dict()
    runner.run(cfg, tmp_path / "shared", None, reports.append, gpu_share=0.5)
    assert reports[-1]["error"].startswith(record.SHARED_GPU_OOM + ": injected")
    runner.run(cfg, tmp_path / "whole", None, reports.append)
    assert reports[-1]["error"].startswith("out of memory: injected")


def test_the_summary_lists_shared_gpu_failures_with_a_whole_gpu_command(tmp_path, capsys):
    from analysis.summary import print_summary
    from study import record

    study = tmp_path / "study"
    for name, reason in (("a1", f"{record.SHARED_GPU_OOM}: CUDA out of memory"),
                         ("b2", "out of memory: CUDA out of memory"), ("c3", None)):
        trial = record.group_dir(study, record.SEARCH) / name
        trial.mkdir(parents=True)
        record.write_config(trial, tiny_trial(**{"lora.rank": 4}).to_dict())
        if reason:
            record.write_status(trial, record.ERRORED, step=1, reason=reason)
        else:
            record.write_status(trial, record.FINISHED, step=6)
    print_summary(study, ["eval_loss"], num_samples=3)
    out = capsys.readouterr().out
    assert "1 configuration(s) ran out of their share of a GPU" in out
    a1 = record.group_dir(study, record.SEARCH) / "a1"
    assert (f"python -m study.train_one --config {a1 / record.CONFIG} --out "
            f"{a1.parent / 'a1-whole-gpu'}") in out
    assert "b2-whole-gpu" not in out  # a whole card's out-of-memory is the configuration's
