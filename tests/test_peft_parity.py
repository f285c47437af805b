"""Our LoRA against PEFT's on the same base and the same A/B: logits and gradients."""

from __future__ import annotations

import pytest
import torch

from lora_impl import inject_lora, lora_layers
from lora_impl.inject import expand_targets
from study.sections import QuantConfig
from study.trial.models import load_model
from tests.conftest import TINY_MODELS, randomize_lora

bnb = pytest.importorskip("bitsandbytes")  # a dependency; skip where it is missing

peft = pytest.importorskip("peft")

TOL = 1e-5


def peft_twin(name: str, bits: int, targets: str, rank: int, alpha: float, rslora: bool,
              variant: str = "lora", device=None):
    """(ours, PEFT's) on two loads of one model, adapters holding the same random A and B (and,
    for ``variant="dora"``, the same magnitude, moved off its init so it matters)."""
    ours, _ = load_model(name, QuantConfig(bits=bits), device=device)
    ref, _ = load_model(name, QuantConfig(bits=bits), device=device)
    inject_lora(ours, targets, rank=rank, alpha=alpha, rslora=rslora, variant=variant)
    randomize_lora(ours, seed=7)
    dora = variant == "dora"
    if dora:
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for _, layer in lora_layers(ours):
                m = layer.lora_magnitude
                m.mul_(1 + 0.1 * torch.randn(m.shape, generator=gen).to(m.device))
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        use_rslora=rslora,
        use_dora=dora,
        target_modules=expand_targets(ref, targets),
        task_type="CAUSAL_LM",
        fan_in_fan_out=(name == "tiny-gpt2" and bits == 16),
    )
    theirs = peft.get_peft_model(ref, config)
    inner = theirs.base_model.model
    with torch.no_grad():
        for module_name, layer in lora_layers(ours):
            twin = inner.get_submodule(module_name)
            twin.lora_A["default"].weight.copy_(layer.lora_A.weight)
            twin.lora_B["default"].weight.copy_(layer.lora_B.weight)
            if dora:
                twin.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)
    return ours, theirs


def lora_grads(model):
    """The adapter's gradients by our parameter names (PEFT's renamed to ours)."""
    grads = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            key = name.removeprefix("base_model.model.").replace(".default", "")
            key = key.replace("lora_magnitude_vector.weight", "lora_magnitude")
            grads[key] = param.grad
    return grads


# Every tiny architecture on a float, an 8-bit and a 4-bit (nf4) base; GPT-2's Conv1D layers
# become bnb linears when quantized. rsLoRA on a float, an 8-bit and a 4-bit base.
CASES = [(m, 16, "all-linear", False) for m in TINY_MODELS] + [
    ("tiny-llama", 8, "all-linear", False),
    ("tiny-qwen2", 8, "all-linear", True),
    ("tiny-gpt2", 8, "qkvo", False),
    ("tiny-neox", 8, "all-linear", False),
    ("tiny-llama", 4, "all-linear", False),
    ("tiny-qwen2", 4, "qv", False),
    ("tiny-gpt2", 4, "all-linear", False),
    ("tiny-neox", 4, "all-linear", True),
    ("tiny-llama", 16, "qv", True),
]


def assert_base_kind(model, bits: int) -> None:
    """Every adapted layer wraps the base the case claims: float, bnb 8-bit or bnb 4-bit nf4."""
    layers = [layer for _, layer in lora_layers(model)]
    assert layers
    for layer in layers:
        base = layer.base_layer
        if bits == 8:
            assert isinstance(base, bnb.nn.Linear8bitLt)
        elif bits == 4:
            assert isinstance(base, bnb.nn.Linear4bit)
            assert base.weight.quant_state.quant_type == "nf4"
        else:
            assert not isinstance(base, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))


@pytest.mark.parametrize("name, bits, targets, rslora", CASES)
def test_logits_and_gradients_match_peft(name, bits, targets, rslora, sample_ids):
    ours, theirs = peft_twin(name, bits, targets, rank=4, alpha=12, rslora=rslora)
    assert_base_kind(ours, bits)
    expected_scaling = 12 / 2 if rslora else 12 / 4  # alpha / sqrt(r) vs alpha / r
    inner = theirs.base_model.model
    for module_name, layer in lora_layers(ours):
        assert layer.scaling == expected_scaling
        assert inner.get_submodule(module_name).scaling["default"] == expected_scaling
    with torch.no_grad():
        diff = (ours(sample_ids).logits - theirs(sample_ids).logits).abs().max().item()
    assert diff <= TOL, f"eval logits differ by {diff}"

    ours.train()
    theirs.train()
    torch.manual_seed(0)  # the same dropout masks in the base model (GPT-2 has dropout)
    out_ours = ours(sample_ids, labels=sample_ids)
    torch.manual_seed(0)
    out_theirs = theirs(sample_ids, labels=sample_ids)
    assert (out_ours.logits - out_theirs.logits).abs().max().item() <= TOL
    out_ours.loss.backward()
    out_theirs.loss.backward()
    g_ours, g_theirs = lora_grads(ours), lora_grads(theirs)
    assert g_ours.keys() == g_theirs.keys()
    for key, grad in g_ours.items():
        gdiff = (grad - g_theirs[key]).abs().max().item()
        assert gdiff <= TOL, f"grad of {key} differs by {gdiff}"
    assert any(g.abs().max() > 0 for g in g_ours.values())


def test_trainable_counts_match_peft():
    ours, theirs = peft_twin("tiny-llama", 4, "all-linear", rank=8, alpha=16, rslora=False)
    from lora_impl import count_parameters

    assert count_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
