"""LoraSpec and LoRALinear alone and injected: zero init, bad arguments, freezing, training."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from lora_impl import LoRALinear, LoraSpec, disable_adapters, inject_lora, lora_layers
from study.sections import QuantConfig
from study.trial.models import load_model
from tests.conftest import TINY_MODELS, randomize_lora


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("bits", [16, 8, 4])
def test_zero_init_adapter_leaves_logits_identical(name, bits, sample_ids):
    model, _ = load_model(name, QuantConfig(bits=bits))
    with torch.no_grad():
        before = model(sample_ids).logits
    result = inject_lora(model, "all-linear", rank=4, alpha=8)
    assert result.replaced
    with torch.no_grad():
        after = model(sample_ids).logits
    assert torch.equal(before, after)


def test_forward_is_base_plus_scaled_update():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, LoraSpec(rank=4, alpha=6))
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 5, 16)
    expected = base(x) + (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T) * (6 / 4)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)
    rslora = LoRALinear(base, LoraSpec(rank=4, alpha=6, rslora=True))
    assert rslora.scaling == rslora.spec.scaling == pytest.approx(6 / math.sqrt(4))


def test_init_options():
    torch.manual_seed(0)
    kaiming = LoRALinear(nn.Linear(256, 256), LoraSpec(rank=64, alpha=16))
    gaussian = LoRALinear(nn.Linear(256, 256), LoraSpec(rank=64, alpha=16, init="gaussian"))
    for layer in (kaiming, gaussian):
        assert torch.count_nonzero(layer.lora_B.weight) == 0
        assert torch.count_nonzero(layer.lora_A.weight) > 0
    # Kaiming-uniform with a=sqrt(5) is bounded by 1/sqrt(fan_in); N(0, 1/r) has std 1/r
    assert kaiming.lora_A.weight.abs().max() <= 1 / math.sqrt(256)
    assert gaussian.lora_A.weight.std().item() == pytest.approx(1 / 64, rel=0.05)


def test_adapter_dtype_is_float32_whatever_the_base():
    layer = LoRALinear(nn.Linear(8, 8, dtype=torch.bfloat16), LoraSpec(rank=2, alpha=4))
    assert layer.lora_A.weight.dtype == torch.float32
    out = layer(torch.randn(2, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    half = LoRALinear(nn.Linear(8, 8), LoraSpec(rank=2, alpha=4, dtype=torch.bfloat16))
    assert half.lora_B.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 0}, "lora.rank must be a positive integer, got 0"),
        ({"rank": -2}, "lora.rank must be a positive integer, got -2"),
        ({"rank": 2.5}, "lora.rank must be a positive integer, got 2.5"),
        ({"rank": True}, "lora.rank must be a positive integer, got True"),
        ({"alpha": 0}, "lora.alpha must be a number > 0, got 0"),
        ({"alpha": -1.0}, "lora.alpha must be a number > 0, got -1.0"),
        ({"alpha": float("nan")}, "lora.alpha must be a number > 0, got nan"),
        ({"alpha": float("inf")}, "lora.alpha must be a number > 0, got inf"),
        ({"dropout": 1.0}, "lora.dropout must be in [0, 1), got 1.0"),
        ({"dropout": -0.1}, "lora.dropout must be in [0, 1), got -0.1"),
        ({"init": "xavier"}, "lora.init must be one of kaiming, gaussian, pissa, pissa_niter_K "
         "(K >= 1) or olora, got 'xavier'"),
        ({"rslora": "yes"}, "lora.rslora must be true or false, got 'yes'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_field_and_allowed_values(kwargs, message):
    args = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "init": "kaiming"} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        LoraSpec(**args)
    model, _ = load_model("tiny-llama")
    with pytest.raises(ValueError, match=re.escape(message)):
        inject_lora(model, "qv", **args)
    assert not list(lora_layers(model)), "a failed inject must leave the model untouched"


# Each field, a bad value, and the allowed values its message must name.
BAD_FIELDS = {
    "rank": (0, "a positive integer"),
    "alpha": (-1.0, "a number > 0"),
    "dropout": (1.5, "in [0, 1)"),
    "init": ("xavier", "one of kaiming, gaussian, pissa, pissa_niter_K (K >= 1) or olora"),
    "rslora": (1, "true or false"),
    "dtype": (torch.int8, "a floating-point torch.dtype"),
}


@pytest.mark.parametrize("field", list(BAD_FIELDS))
def test_lora_spec_names_the_bad_field_and_its_allowed_values(field):
    value, allowed = BAD_FIELDS[field]
    args = {"rank": 4, "alpha": 8.0} | {field: value}
    with pytest.raises(ValueError) as err:
        LoraSpec(**args)
    assert str(err.value) == f"lora.{field} must be {allowed}, got {value!r}"


def test_lora_spec_scaling_and_immutability():
    assert LoraSpec(rank=16, alpha=8).scaling == 8 / 16
    assert LoraSpec(rank=16, alpha=8, rslora=True).scaling == 8 / 4
    spec = LoraSpec(rank=4, alpha=8)
    with pytest.raises(AttributeError):
        spec.rank = 0  # frozen: a spec stays valid
    layer = LoRALinear(nn.Linear(4, 4), spec)
    with pytest.raises(AttributeError):
        layer.rank = 2  # read from the spec, not a second copy that could drift


@pytest.mark.parametrize(
    "kwargs", [{"dropout": 0.0}, {"dropout": 0.999}, {"init": "gaussian"}, {"rank": 1, "alpha": 1}]
)
def test_boundary_arguments_are_accepted(kwargs):
    args = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "init": "kaiming"} | kwargs
    layer = LoRALinear(nn.Linear(4, 4), LoraSpec(**args))
    assert layer.dropout == args["dropout"] and layer.rank == args["rank"]
    assert layer.spec == LoraSpec(**args)


def test_unsupported_base_layer_is_a_type_error():
    with pytest.raises(TypeError, match="Conv2d"):
        LoRALinear(nn.Conv2d(3, 3, 1), LoraSpec(rank=2, alpha=2))
    with pytest.raises(TypeError, match="LoraSpec"):
        LoRALinear(nn.Linear(4, 4), 2)  # the old positional rank


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_training_changes_only_adapter_parameters(bits, sample_ids):
    model, _ = load_model("tiny-llama", QuantConfig(bits=bits))
    inject_lora(model, "all-linear", rank=4, alpha=8, dropout=0.1)
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    for _ in range(3):
        loss = model(sample_ids, labels=sample_ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"base parameter {name} changed"


def test_disable_adapters_gives_the_base_model(sample_ids):
    model, _ = load_model("tiny-qwen2")
    with torch.no_grad():
        base = model(sample_ids).logits
    inject_lora(model, "qkvo", rank=4, alpha=8)
    randomize_lora(model)
    with torch.no_grad():
        adapted = model(sample_ids).logits
        with disable_adapters(model):
            disabled = model(sample_ids).logits
        again = model(sample_ids).logits
    assert not torch.allclose(adapted, base)
    assert torch.equal(disabled, base)
    assert torch.equal(again, adapted)
