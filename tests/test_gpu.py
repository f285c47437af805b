"""On CUDA (skipped elsewhere): 16-, 8- and 4-bit trials, merge and export, fractional GPUs.

Run by ``make gpu-check`` on the lent machine, which has no Ray: the study-level test of
fractional GPUs skips there (it needs Ray and a GPU); the per-process cap is tested without Ray.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from study.sections import QuantConfig
from tests.conftest import tiny_trial

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _gpu_trial(bits: int, **overrides):
    return tiny_trial(**{"quant.bits": bits, "train.dtype": "auto", "train.steps": 4,
                         "eval.every": 2, **overrides})


@pytest.mark.parametrize("bits, weights", [(16, None), (8, "int8"), (4, "nf4")])
def test_a_trial_runs_on_cuda_with_its_storage_dtype(bits, weights, tmp_path):
    from study import record
    from study.trial.run import run_trial

    metrics = run_trial(_gpu_trial(bits), out_dir=tmp_path / "t")
    env = record.read_env(tmp_path / "t")
    expected = weights or ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert env["device"] == "cuda" and env["weights"] == expected
    assert env["float_weights"] in ("bf16", "fp16")  # 16-bit on CUDA is not fp32
    assert metrics["eval_loss"] < 10 and metrics["peak_mem_mb"] > 0


def test_quantized_weights_and_their_statistics_live_on_the_gpu():
    import bitsandbytes as bnb

    from study.trial.models import load_model

    model8, _ = load_model("tiny-llama", QuantConfig(bits=8), device=CUDA, dtype=torch.bfloat16)
    for m in model8.modules():
        if isinstance(m, bnb.nn.Linear8bitLt):
            assert m.weight.device.type == m.weight.CB.device.type == "cuda"
            assert m.weight.SCB.device.type == "cuda"
            assert m.weight.CB.data_ptr() == m.weight.data.data_ptr()
    model4, _ = load_model("tiny-llama", QuantConfig(bits=4), device=CUDA, dtype=torch.bfloat16)
    for m in model4.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            assert m.weight.device.type == m.weight.quant_state.absmax.device.type == "cuda"
    ids = torch.randint(0, 256, (2, 8), device=CUDA)
    with torch.no_grad():
        assert torch.isfinite(model8(ids).logits).all() and torch.isfinite(model4(ids).logits).all()


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_merge_and_unmerge_on_cuda(bits):
    from lora_impl import inject_lora, lora_layers, merge, unmerge
    from study.trial.models import load_model
    from tests.conftest import randomize_lora

    model, _ = load_model("tiny-llama", QuantConfig(bits=bits), device=CUDA, dtype=torch.bfloat16)
    inject_lora(model, "all-linear", rank=4, alpha=8)
    randomize_lora(model, std=0.05)
    before = {n: layer.base_layer.weight.detach().clone() for n, layer in lora_layers(model)}
    ids = torch.randint(0, 256, (2, 16), device=CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        unmerged = model(ids).logits.float()
        merge(model)
        merged = model(ids).logits.float()
    unmerge(model)
    assert (merged - unmerged).abs().max() < 0.1 * unmerged.abs().max()
    for name, layer in lora_layers(model):
        assert torch.equal(before[name], layer.base_layer.weight.detach()), name


@pytest.mark.parametrize("bits", [16, 4])
def test_export_of_a_cuda_trial(bits, tmp_path):
    from study.export import export
    from study.trial.run import run_trial

    run_trial(_gpu_trial(bits), out_dir=tmp_path / "t")
    adapter = export(tmp_path / "t", tmp_path / "adapter")
    merged = export(tmp_path / "t", tmp_path / "merged", merged=True)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (merged / "model.safetensors").is_file()


def test_a_trial_process_is_capped_at_its_share_of_the_card():
    """Without Ray: the cap ``--gpus-per-trial 0.25`` sets refuses a third of the card."""
    code = (
        "import torch; from study import runner\n"
        "assert runner.share_gpu(0.25)\n"
        "total = torch.cuda.get_device_properties(0).total_memory\n"
        "try:\n"
        "    torch.empty(int(total * 0.3), dtype=torch.uint8, device='cuda')\n"
        "except torch.OutOfMemoryError:\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "refused"


def test_fractional_gpu_trials_share_one_card(tmp_path):
    """A study with two trials on half a GPU each (needs Ray: skipped on the lent machine)."""
    pytest.importorskip("ray")
    pytest.importorskip("optuna")
    from study import record

    cmd = [sys.executable, "-m", "study.tune", "--space", "smoke", "--num-samples", "2",
           "--gpus-per-trial", "0.5", "--max-concurrent", "2", "--no-baselines",
           "--storage-path", str(tmp_path), "--name", "shared"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    statuses = [record.read_status(d).get("status")
                for d in record.trial_dirs(tmp_path / "shared", record.SEARCH)]
    assert statuses == [record.FINISHED] * 2
