"""merge / unmerge / unload on float and quantized bases."""

from __future__ import annotations

import pytest
import torch

from lora_impl import inject_lora, lora_layers, merge, unload, unmerge
from lora_impl.quant import canonical_4bit, int8_weight_stats
from study.sections import QuantConfig
from study.trial.models import load_model
from tests.conftest import randomize_lora

bnbf = pytest.importorskip("bitsandbytes.functional")  # a dependency; skip where it is missing


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_float_merged_logits_equal_unmerged(name, sample_ids):
    model, _ = load_model(name)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    inject_lora(model, "all-linear", rank=4, alpha=8)
    randomize_lora(model)
    with torch.no_grad():
        unmerged = model(sample_ids).logits
        assert merge(model) == len(list(lora_layers(model)))
        merged = model(sample_ids).logits
        assert unmerge(model) > 0
        again = model(sample_ids).logits
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert (again - unmerged).abs().max().item() <= 1e-5
    restored = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    for n, p in original.items():
        torch.testing.assert_close(restored[n], p, rtol=0, atol=1e-6)


def test_unload_with_merge_returns_a_plain_model(sample_ids):
    model, _ = load_model("tiny-neox")
    inject_lora(model, "qkvo", rank=2, alpha=4)
    randomize_lora(model)
    with torch.no_grad():
        adapted = model(sample_ids).logits
        plain = unload(model, merge=True)
        assert not list(lora_layers(plain))
        assert not any("lora_" in n for n, _ in plain.named_parameters())
        assert (plain(sample_ids).logits - adapted).abs().max().item() <= 1e-5


def test_unload_without_merge_restores_the_base(sample_ids):
    model, _ = load_model("tiny-llama")
    with torch.no_grad():
        base = model(sample_ids).logits
    inject_lora(model, "qv", rank=2, alpha=4)
    randomize_lora(model)
    with torch.no_grad():
        assert torch.equal(unload(model)(sample_ids).logits, base)


def test_merge_refuses_non_finite_weights():
    model, _ = load_model("tiny-llama")
    inject_lora(model, "qv", rank=2, alpha=4)
    name, layer = next(lora_layers(model))
    before = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B.weight.fill_(float("inf"))
        layer.lora_A.weight.fill_(1.0)
    with pytest.raises(ValueError, match="non-finite"):
        merge(model)
    assert not layer.merged
    assert torch.equal(layer.base_layer.weight, before)


def _state_tensors(qs):
    """The tensors a 4-bit quant state holds: absmax, and with double quantization the
    quantized absmax's offset and its own (second-level) absmax and code."""
    tensors = [qs.absmax]
    if qs.nested:
        tensors += [qs.offset, qs.state2.absmax, qs.state2.code]
    return tensors


def _assert_same_state(got, expected):
    assert got.nested == expected.nested
    got_t, exp_t = _state_tensors(got), _state_tensors(expected)
    assert len(got_t) == len(exp_t)
    assert all(torch.equal(g, e) for g, e in zip(got_t, exp_t))


def _snapshot_4bit(base):
    canonical_4bit(base)
    qs = base.weight.quant_state
    return base.weight.data.clone(), [t.clone() for t in _state_tensors(qs)], qs


def _snapshot_8bit(base):
    cb, scb = int8_weight_stats(base)
    return cb.clone(), scb.clone()


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_merge_is_requantized_sum_and_unmerge_is_bitwise(quant_type, double_quant, sample_ids):
    model, _ = load_model(
        "tiny-llama", QuantConfig(bits=4, type=quant_type, double_quant=double_quant)
    )
    inject_lora(model, "all-linear", rank=4, alpha=8)
    randomize_lora(model, std=0.2)
    layers = list(lora_layers(model))
    originals = [_snapshot_4bit(layer.base_layer) for _, layer in layers]
    assert all(qs.nested == double_quant for _, _, qs in originals)
    with torch.no_grad():
        merge(model)
    for (_, layer), (data, _state, qs) in zip(layers, originals):
        delta = (layer.lora_B.weight @ layer.lora_A.weight) * layer.scaling
        expected, expected_qs = bnbf.quantize_4bit(
            bnbf.dequantize_4bit(data, qs) + delta,
            blocksize=qs.blocksize,
            quant_type=quant_type,
            compress_statistics=double_quant,
        )
        got = layer.base_layer.weight
        assert torch.equal(got.data, expected)
        _assert_same_state(got.quant_state, expected_qs)
        assert got.quant_state.quant_type == quant_type
        assert not torch.equal(got.data, data), "the merge must change the quantized weight"
    for _ in range(10):  # forwards in between re-pack weights for the CPU kernel
        with torch.no_grad():
            unmerge(model)
            model(sample_ids)
            merge(model)
            model(sample_ids)
    unmerge(model)
    for (_, layer), (data, state, _qs) in zip(layers, originals):
        canonical_4bit(layer.base_layer)
        assert torch.equal(layer.base_layer.weight.data, data)
        restored = _state_tensors(layer.base_layer.weight.quant_state)
        assert len(restored) == len(state)
        assert all(torch.equal(r, o) for r, o in zip(restored, state))


def test_8bit_merge_is_requantized_sum_and_unmerge_is_bitwise(sample_ids):
    model, _ = load_model("tiny-qwen2", QuantConfig(bits=8))
    inject_lora(model, "all-linear", rank=4, alpha=8)
    randomize_lora(model, std=0.2)
    with torch.no_grad():
        model(sample_ids)  # first forward moves CB/SCB into the layer state: cover that path
    layers = list(lora_layers(model))
    originals = [_snapshot_8bit(layer.base_layer) for _, layer in layers]
    with torch.no_grad():
        merge(model)
    for (_, layer), (cb, scb) in zip(layers, originals):
        delta = (layer.lora_B.weight @ layer.lora_A.weight) * layer.scaling
        summed = bnbf.int8_vectorwise_dequant(cb, scb) + delta
        exp_cb, exp_scb, _ = bnbf.int8_vectorwise_quant(summed.to(torch.float16))
        got_cb, got_scb = int8_weight_stats(layer.base_layer)
        assert torch.equal(got_cb, exp_cb) and torch.equal(got_scb, exp_scb)
        assert not torch.equal(got_cb, cb)
    for _ in range(10):
        with torch.no_grad():
            model(sample_ids)
            unmerge(model)
            model(sample_ids)
            merge(model)
    unmerge(model)
    for (_, layer), (cb, scb) in zip(layers, originals):
        got_cb, got_scb = int8_weight_stats(layer.base_layer)
        assert torch.equal(got_cb, cb) and torch.equal(got_scb, scb)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_merged_forward_stays_close(bits, sample_ids):
    """Re-quantization error only: the merged model still computes nearly the adapted one."""
    model, _ = load_model("tiny-llama", QuantConfig(bits=bits))
    inject_lora(model, "qv", rank=4, alpha=8)
    randomize_lora(model, std=0.05)
    with torch.no_grad():
        unmerged = model(sample_ids).logits
        merge(model)
        merged = model(sample_ids).logits
    assert (merged - unmerged).abs().max().item() < 0.1 * unmerged.abs().max().item()


@pytest.mark.parametrize(
    "bits, value",
    [
        (4, float("inf")),
        (4, float("nan")),
        (8, float("inf")),
        (8, float("nan")),
        (8, 1e5),  # finite in fp32 but not in the fp16 that Int8Params quantizes from
    ],
)
def test_quantized_merge_refuses_non_finite_weights(bits, value):
    model, _ = load_model("tiny-llama", QuantConfig(bits=bits))
    inject_lora(model, "qv", rank=2, alpha=4)
    name, layer = next(lora_layers(model))
    base = layer.base_layer
    weight = base.weight
    if bits == 4:
        data, state, _ = _snapshot_4bit(base)
    else:
        data, state = _snapshot_8bit(base)
    with torch.no_grad():
        layer.lora_B.weight.fill_(value)
        layer.lora_A.weight.fill_(1.0)
    with pytest.raises(ValueError, match="non-finite") as err:
        merge(model)
    assert name in str(err.value)
    assert not layer.merged and layer._unmerged_base is None
    assert unmerge(model) == 0, "nothing was merged before the refused layer"
    assert base.weight is weight, "the refused merge must not replace the quantized weight"
    if bits == 4:
        assert torch.equal(base.weight.data, data)
        assert all(torch.equal(r, o) for r, o in zip(_state_tensors(weight.quant_state), state))
    else:
        cb, scb = int8_weight_stats(base)
        assert torch.equal(cb, data) and torch.equal(scb, state)
