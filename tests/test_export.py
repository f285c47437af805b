"""python -m study.export: the adapter as PEFT files, or a merged model transformers loads alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_impl import load_adapter
from study.export import main
from study.sections import QuantConfig
from study.trial.models import load_model
from study.trial.run import run_trial
from tests.conftest import tiny_trial

ROOT = Path(__file__).resolve().parents[1]


def trials_of(study: Path, method: str, status: str = "finished", bits: int | None = None):
    found = []
    for config_path in sorted(study.glob("*/*/config.json")):
        config = json.loads(config_path.read_text())
        state = json.loads((config_path.parent / "status.json").read_text())["status"]
        wanted_bits = bits is None or config["quant"]["bits"] == bits
        if config["method"] == method and state == status and wanted_bits:
            found.append(config_path.parent)
    return found


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def unmerged(trial: Path):
    """The model as the trial evaluated it: the (quantized) base with the adapter beside it."""
    config = json.loads((trial / "config.json").read_text())
    model, _ = load_model(config["model"]["name"], QuantConfig(bits=config["quant"]["bits"]))
    load_adapter(model, trial / "adapter")
    return model


def check_merged_export(trial: Path, out: Path, sample_ids: torch.Tensor, atol: float) -> None:
    assert main([str(trial), str(out), "--merged"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out)  # transformers alone, no lora_impl
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    expected = logits(unmerged(trial), sample_ids)
    got = logits(merged, sample_ids)
    assert torch.allclose(got, expected, atol=atol, rtol=0), (got - expected).abs().max()
    config = json.loads((trial / "config.json").read_text())
    base, tokenizer = load_model(config["model"]["name"])
    assert (got - logits(base, sample_ids)).abs().max() > 1e-2  # the adapter changed the model
    saved = AutoTokenizer.from_pretrained(out)
    assert saved("Hello, world")["input_ids"] == tokenizer("Hello, world")["input_ids"]
    assert json.loads((out / "trial_config.json").read_text()) == config


def test_merged_export_of_a_study_trial_gives_the_adapters_logits(
    multi_study, tmp_path, sample_ids
):
    trial = trials_of(multi_study, "lora", bits=16)[0]
    check_merged_export(trial, tmp_path / "merged", sample_ids, atol=1e-5)
    record = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert record["merged"] and record["dequantized_from"] is None
    assert record["status"] == "finished"


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_merged_export_of_a_4bit_trial_is_dequantized(model, tmp_path, sample_ids):
    trial = tmp_path / "trial"
    cfg = tiny_trial(
        **{"model.name": model, "quant.bits": 4, "lora.targets": "all-linear", "train.lr": 0.05}
    )
    run_trial(cfg, out_dir=trial)
    # the float model computes W = dequant(Q) + s B A, i.e. what the trial evaluated
    check_merged_export(trial, tmp_path / "merged", sample_ids, atol=1e-4)
    record = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert record["dequantized_from"] == "4-bit nf4"


def test_adapter_export_copies_the_peft_files(multi_study, tmp_path):
    trial = trials_of(multi_study, "lora")[0]
    out = tmp_path / "adapter"
    assert main([str(trial), str(out)]) == 0
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (trial / "adapter" / name).read_bytes()
    assert (out / "trial_config.json").read_bytes() == (trial / "config.json").read_bytes()
    assert json.loads((out / "export.json").read_text())["merged"] is False


def test_full_fine_tuning_exports_its_checkpoint_weights(multi_study, tmp_path, sample_ids):
    from safetensors.torch import load_file

    (trial,) = trials_of(multi_study, "full")
    assert main([str(trial), str(tmp_path / "full"), "--merged"]) == 0
    model, _ = load_model("tiny-llama")
    base = logits(model, sample_ids)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(trial / "checkpoint" / "trainable.safetensors").items():
            params[name].copy_(tensor)
    exported = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "full"), sample_ids)
    assert torch.allclose(exported, logits(model, sample_ids), atol=1e-6)
    assert not torch.allclose(exported, base, atol=1e-4)


def test_refusals_are_one_line_and_exit_2(multi_study, tmp_path, capsys):
    (base,) = trials_of(multi_study, "base")
    (full,) = trials_of(multi_study, "full")
    lora = trials_of(multi_study, "lora")[0]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    cases = [
        ([str(base), str(tmp_path / "a"), "--merged"], "method=base trial: nothing was trained"),
        ([str(full), str(tmp_path / "b")], "full fine-tuning (no adapter): use --merged"),
        ([str(lora), str(taken)], "exists and is not empty"),
        ([str(tmp_path), str(tmp_path / "c")], "is not a trial directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing half-written
    res = subprocess.run(
        [sys.executable, "-m", "study.export", str(base), str(tmp_path / "d")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.startswith("study.export: error: ")
