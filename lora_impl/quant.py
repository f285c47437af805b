"""bitsandbytes layers: what kind a layer is, its float weight, and quantizing one back.

    quant_kind(module)      # "4bit", "8bit" or None
    base_weight(module)     # the float (out, in) weight a base layer computes with
    write_quantized(module, weight)  # a float (out, in) weight into a 4/8-bit layer

The one place lora_impl touches bitsandbytes' storage (Params4bit, Int8Params and their
states); merge, DoRA and the PiSSA / OLoRA inits use it. Imports nothing of lora_impl.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def quant_kind(module: nn.Module) -> str | None:
    """'4bit' or '8bit' for a bitsandbytes linear, None for anything else.

    bitsandbytes is only consulted if something already imported it: a bnb layer cannot exist
    otherwise, and importing it costs seconds.
    """
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return None
    if isinstance(module, bnb.nn.Linear4bit):
        return "4bit"
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "8bit"
    return None


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' GPT-2 style ``Conv1D`` (a linear with a (in, out) weight)."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    return pytorch_utils is not None and isinstance(module, pytorch_utils.Conv1D)


def base_weight(base: nn.Module) -> torch.Tensor:
    """The float weight (out, in) a base layer computes with (dequantized for 4/8-bit bases,
    transposed for GPT-2's Conv1D)."""
    kind = quant_kind(base)
    if kind == "4bit":
        return dequantize_4bit_weight(base)
    if kind == "8bit":
        import bitsandbytes as bnb

        cb, scb = int8_weight_stats(base)
        return bnb.functional.int8_vectorwise_dequant(cb, scb)
    return base.weight.T if is_conv1d(base) else base.weight


def canonical_4bit(base: nn.Module) -> None:
    """Undo bitsandbytes' CPU inference packing of a Linear4bit weight, in place.

    On CPUs with AVX512-BF16, an eval-mode no-grad forward re-packs the 4-bit weight into a
    kernel-friendly layout; (de)quantization functions expect the standard layout.
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    weight = base.weight
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(
            weight.data, weight.quant_state
        )
        base.quant_state = weight.quant_state


def dequantize_4bit_weight(base: nn.Module) -> torch.Tensor:
    """The float weight (out, in) a Linear4bit computes with."""
    import bitsandbytes.functional as bnbf

    canonical_4bit(base)
    return bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state)


def quantize_4bit_like(weight: torch.Tensor, like: nn.Parameter, module: nn.Module) -> nn.Parameter:
    """Quantize a float weight with the blocksize, type and storage of the Params4bit ``like``."""
    import bitsandbytes as bnb

    data, state = bnb.functional.quantize_4bit(
        weight,
        blocksize=like.blocksize,
        compress_statistics=like.compress_statistics,
        quant_type=like.quant_type,
        quant_storage=like.quant_storage,
    )
    return bnb.nn.Params4bit(
        data,
        requires_grad=False,
        quant_state=state,
        blocksize=like.blocksize,
        compress_statistics=like.compress_statistics,
        quant_type=like.quant_type,
        quant_storage=like.quant_storage,
        module=module,
        bnb_quantized=True,
    )


def int8_weight_stats(base: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(CB, SCB) of a Linear8bitLt: int8 rows and their absmax scales, wherever bnb keeps them."""
    weight = base.weight
    if getattr(weight, "CB", None) is not None:
        return weight.CB, weight.SCB
    return base.state.CB, base.state.SCB  # moved there by the layer's first forward


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CB, SCB) of a float weight, exactly as ``Int8Params`` quantizes (row-wise, via fp16)."""
    import bitsandbytes.functional as bnbf

    cb, scb, _ = bnbf.int8_vectorwise_quant(weight.to(torch.float16))
    return cb, scb


def write_quantized(base: nn.Module, weight: torch.Tensor) -> None:
    """Quantize the float (out, in) ``weight`` into the 4- or 8-bit layer ``base`` with its own
    settings, replacing its weight (the caller keeps the old one where it must come back)."""
    kind = quant_kind(base)
    if kind == "4bit":
        base.weight = quantize_4bit_like(weight, base.weight, base)
        base.quant_state = base.weight.quant_state
    elif kind == "8bit":
        import bitsandbytes as bnb

        cb, scb = quantize_int8(weight)
        base.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb,
                                        SCB=scb)
        base.state.CB = base.state.SCB = None  # the next forward re-initialises from the weight
    else:
        raise TypeError(f"not a 4- or 8-bit bitsandbytes layer: {type(base).__name__}")
