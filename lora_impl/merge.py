"""Merge the LoRA update into the base weight, undo it, or strip the adapters.

    merge(model)     # W <- W + s B A: inference at the base model's cost
    unmerge(model)   # back to W (bitwise for 4/8-bit bases; W - s B A for float bases)
    unload(model, merge=True)  # a plain transformers model again

A quantized base cannot hold ``W + s B A`` exactly: merge dequantizes, adds, and re-quantizes
with the layer's own settings, keeping the original quantized tensors so unmerge restores them
bitwise however many times it is repeated. A bf16 / fp16 base (16-bit storage on CUDA) is merged
in fp32 and rounded once, and its original values are kept the same way. Every merge checks the
result is finite before it touches the layer.
"""

from __future__ import annotations

import torch
from torch import nn

from lora_impl.layer import LoRALinear, lora_layers
from lora_impl.quant import base_weight, quant_kind, write_quantized


def merge(model: nn.Module) -> int:
    """Merge every unmerged adapter of ``model``; return how many were merged.

    Raises:
        ValueError: a merge would make a weight non-finite (that layer and later ones stay
            unmerged; earlier ones stay merged and ``unmerge`` undoes them).
    """
    count = 0
    for name, layer in lora_layers(model):
        if not layer.merged:
            merge_layer(layer, name)
            count += 1
    return count


def unmerge(model: nn.Module) -> int:
    """Undo every merged adapter of ``model``; return how many were unmerged."""
    count = 0
    for _, layer in lora_layers(model):
        if layer.merged:
            unmerge_layer(layer)
            count += 1
    return count


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Replace every LoRALinear by its base layer (merged first if ``merge``); return the model."""
    for name, layer in list(lora_layers(model)):
        if merge and not layer.merged:
            merge_layer(layer, name)
        elif not merge and layer.merged:
            unmerge_layer(layer)
        layer._unmerged_base = None  # the merged weight is now the base's own
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    return model


def merge_layer(layer: LoRALinear, name: str = "") -> None:
    """Fold ``layer``'s update into its base weight (see the module docstring)."""
    if layer.merged:
        return
    if not layer.mergeable:
        raise ValueError(f"{type(layer).__name__} ({name or 'a layer'}) cannot be merged: its "
                         "update is not a fixed weight; use it unmerged")
    kind = quant_kind(layer.base_layer)
    delta = layer.delta_weight().detach()
    if kind == "4bit":
        _merge_4bit(layer, delta, name)
    elif kind == "8bit":
        _merge_8bit(layer, delta, name)
    else:
        weight = layer.base_layer.weight
        merged = (weight.data.float() + delta.float()).to(weight.dtype)
        _check_finite(merged, name)
        if weight.dtype != torch.float32 or layer.merge_keeps_base:
            # (W + d) - d is not W once rounded to 16 bits, and DoRA's d depends on W: keep W
            # for a bitwise unmerge
            layer._unmerged_base = {"data": weight.data.clone()}
        weight.data.copy_(merged)
    layer.merged = True


def unmerge_layer(layer: LoRALinear) -> None:
    """Take ``layer``'s update back out of its base weight."""
    if not layer.merged:
        return
    base = layer.base_layer
    saved = layer._unmerged_base
    if saved is not None and "data" in saved:  # a 16-bit float base: its own values back
        base.weight.data.copy_(saved["data"])
        layer._unmerged_base = None
    elif saved is not None:  # quantized: put the original tensors back, bitwise
        base.weight = saved["weight"]
        if "quant_state" in saved:
            base.quant_state = saved["quant_state"]
        if "state" in saved:
            base.state.CB, base.state.SCB = saved["state"]
        layer._unmerged_base = None
    else:
        weight = base.weight
        weight.data -= layer.delta_weight().detach().to(weight.dtype)
    layer.merged = False


def _check_finite(weight: torch.Tensor, name: str) -> None:
    if not torch.isfinite(weight).all():
        raise ValueError(
            f"merging the adapter of {name or 'a layer'} gives non-finite weights; "
            "the layer was left unmerged"
        )


def _merge_4bit(layer: LoRALinear, delta: torch.Tensor, name: str) -> None:
    base = layer.base_layer
    original = base_weight(base)
    merged = original + delta.to(original.dtype)
    _check_finite(merged, name)
    layer._unmerged_base = {"weight": base.weight, "quant_state": base.weight.quant_state}
    write_quantized(base, merged)


def _merge_8bit(layer: LoRALinear, delta: torch.Tensor, name: str) -> None:
    base = layer.base_layer
    merged = base_weight(base) + delta.float()
    _check_finite(merged.to(torch.float16), name)  # Int8Params quantizes from fp16
    layer._unmerged_base = {"weight": base.weight, "state": (base.state.CB, base.state.SCB)}
    write_quantized(base, merged)
