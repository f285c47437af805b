"""A user's own LoRA variant (issue 18, acceptance 4): docs/examples/ortho_lora.py trained on a
tiny model keeps its constraint, merges, exports to PEFT, and runs in a study named from the
command line; a name that cannot be used is one line, exit 2, no result directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_impl import inject_lora, lora_layers, merge, save_adapter, unmerge
from study.trial.models import load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
VARIANT = "ortho_lora:OrthoLoRA"


@pytest.fixture
def ortho(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import ortho_lora

    return ortho_lora


def test_the_example_trains_and_its_factors_stay_orthonormal(ortho, sample_ids, tmp_path):
    model, _ = load_model("tiny-llama")
    with torch.no_grad():
        before = model(sample_ids).logits
    inject_lora(model, "all-linear", rank=4, alpha=8, variant=VARIANT)
    layers = [layer for _, layer in lora_layers(model)]
    assert layers and all(isinstance(layer, ortho.OrthoLoRA) for layer in layers)
    with torch.no_grad():  # sigma = 0: the base model exactly
        assert torch.equal(model(sample_ids).logits, before)
    params = [p for p in model.parameters() if p.requires_grad]
    assert any(p is layers[0].lora_sigma for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(sample_ids, labels=sample_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    eye = torch.eye(4)
    for layer in layers:
        qa, qb = layer.factors()
        assert (qa @ qa.T - eye).abs().max().item() <= 1e-5
        assert (qb.T @ qb - eye).abs().max().item() <= 1e-5
        assert layer.lora_sigma.abs().max().item() > 0
    model.eval()
    with torch.no_grad():
        unmerged = model(sample_ids).logits
        merge(model)
        assert (model(sample_ids).logits - unmerged).abs().max().item() <= 1e-5
        unmerge(model)
    peft = pytest.importorskip("peft")
    save_adapter(model, tmp_path / "a")  # as the plain LoRA with the same (rank-r) update
    base, _ = load_model("tiny-llama")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "a")
    with torch.no_grad():
        assert (theirs(sample_ids).logits - unmerged).abs().max().item() <= 1e-4


def tune(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), "docs/examples"])}
    return subprocess.run([sys.executable, "-m", "study.tune", "--space", "smoke",
                           "--storage-path", str(tmp_path / "res"), "--name", "u", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_example_runs_in_a_study_named_on_the_command_line(tmp_path):
    """A relative PYTHONPATH entry (docs/examples) reaches the trials as an absolute one."""
    done = tune(["--set", f"lora.variant={VARIANT}", "--num-samples", "1", "--no-baselines",
                 "--set", "train.steps=4"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = list((tmp_path / "res" / "u" / "search").glob("*/status.json"))
    assert len(trials) == 1 and '"finished"' in trials[0].read_text()
    config = (trials[0].parent / "config.json").read_text()
    assert VARIANT in config


@pytest.mark.parametrize("name, message", [
    ("nope_module:X", "cannot import nope_module (ModuleNotFoundError"),
    ("ortho_lora:Missing", "ortho_lora has no Missing"),
    ("ortho_lora:orthonormal_factors", "orthonormal_factors is not a subclass of"),
])
def test_a_variant_that_cannot_be_used_stops_the_study_in_one_line(name, message, tmp_path):
    done = tune(["--set", f"lora.variant={name}"], tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "res").exists()
