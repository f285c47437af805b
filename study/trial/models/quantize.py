"""Quantization of a model's frozen linear layers with bitsandbytes (LLM.int8 or 4-bit).

Every linear layer except the output head becomes a ``Linear8bitLt`` or ``Linear4bit``, the same
way for every model source.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging

import torch
from torch import nn

from study.sections import QuantConfig

BLOCKSIZE = 64  # 4-bit block size, bitsandbytes' and QLoRA's default


class _OncePerMessage(logging.Filter):
    """Let each distinct log message through once (bnb's 8-bit matmul warns on every call)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_bnb_warnings() -> None:
    """Let each bitsandbytes matmul warning through once (the 8-bit matmul warns on every call)."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OncePerMessage) for f in logger.filters):
        logger.addFilter(_OncePerMessage())


def import_bitsandbytes():
    """bitsandbytes, imported without its notice on AVX512-BF16 CPUs that an optional kernel
    package is missing (it falls back to its own kernel): a line on stderr that is no error."""
    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = ops.level
    ops.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        ops.setLevel(level)
    return bitsandbytes


def quantize_linears(
    model: nn.Module, quant: QuantConfig, compute_dtype: torch.dtype | None = None
) -> list[str]:
    """Replace every linear except the output head (a causal LM's ``lm_head``, a classifier's
    ``score``) by a bitsandbytes layer of ``quant.bits`` 8 or 4; return the names.

    Each weight is quantized where it already is (put the model on its device first): a
    bitsandbytes parameter moved after quantization by ``Module.to`` keeps the Parameter object
    and, for 8-bit, its int8 matrix and scales on the old device (``weight.CB`` / ``SCB``).
    8-bit is LLM.int8 with the outlier threshold ``quant.int8_threshold``; 4-bit computes in
    ``compute_dtype`` (see ``set_compute_dtype``). GPT-2's ``Conv1D`` (weight stored (in, out))
    becomes a bnb Linear with the transposed weight.

    Raises:
        ValueError: ``quant.bits`` is 16, which quantizes nothing.
    """
    if quant.bits not in (4, 8):
        raise ValueError(f"quantize_linears needs quant.bits 4 or 8, got {quant.bits}")
    bnb = import_bitsandbytes()
    from lora_impl.inject import output_heads
    from lora_impl.layer import is_linear_like
    from lora_impl.quant import is_conv1d, quant_kind

    heads = output_heads(model)
    replaced = []
    for name, module in list(model.named_modules()):
        if any(module is h for h in heads) or not is_linear_like(module) or quant_kind(
                module) is not None:
            continue
        weight = module.weight.data
        if is_conv1d(module):
            weight = weight.t()
        weight = weight.contiguous()
        has_bias = module.bias is not None
        if quant.bits == 8:
            new = _int8_linear(bnb, weight, has_bias, quant.int8_threshold)
        else:
            new = _4bit_linear(bnb, weight, has_bias, quant, compute_dtype)
        if has_bias:
            new.bias = nn.Parameter(module.bias.data.clone(), requires_grad=False)
        new.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        del module, weight  # the float weight goes as soon as its layer is replaced
        replaced.append(name)
    return replaced


def _int8_linear(bnb, weight: torch.Tensor, bias: bool, threshold: float) -> nn.Module:
    """An LLM.int8 layer (without its bias) holding ``weight`` (out, in), quantized in place."""
    out_features, in_features = weight.shape
    new = bnb.nn.Linear8bitLt(
        in_features,
        out_features,
        bias=bias,
        has_fp16_weights=False,
        threshold=float(threshold),
        device="meta",
    )
    # what Int8Params does when moved from CPU, done on the weight's own device
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16))
    new.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
    return new


def _4bit_linear(bnb, weight: torch.Tensor, bias: bool, quant: QuantConfig,
                 compute_dtype: torch.dtype | None) -> nn.Module:
    """A 4-bit layer (without its bias) holding ``weight`` (out, in), quantized in place."""
    out_features, in_features = weight.shape
    new = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=bias,
        compute_dtype=compute_dtype,
        compress_statistics=quant.double_quant,
        quant_type=quant.type,
        device="meta",
    )
    packed, state = bnb.functional.quantize_4bit(
        weight,
        blocksize=BLOCKSIZE,
        compress_statistics=quant.double_quant,
        quant_type=quant.type,
        quant_storage=torch.uint8,
    )
    new.weight = bnb.nn.Params4bit(
        packed,
        requires_grad=False,
        quant_state=state,
        blocksize=BLOCKSIZE,
        compress_statistics=quant.double_quant,
        quant_type=quant.type,
        module=new,
        bnb_quantized=True,
    )
    new.quant_state = state
    # On AVX512-BF16 CPUs bnb re-packs a 4-bit weight at its first eval-mode forward and rounds
    # the block scales to bf16 in place: the base model would silently change after the first
    # evaluation. Keep the weights as quantized.
    new.support_avx512bf16_for_cpu = False
    return new


def set_compute_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """Make every 4-bit layer compute in ``dtype`` (the trial's compute dtype), explicitly:
    left unset, bitsandbytes takes the dtype of its first input and keeps it."""
    from lora_impl.quant import quant_kind

    for module in model.modules():
        if quant_kind(module) == "4bit":
            module.compute_dtype = dtype
            module.compute_type_is_set = True


def plain_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The model's parameters and buffers that are plain tensors (not bitsandbytes' own)."""
    return [t for t in [*model.parameters(), *model.buffers()]
            if type(t) in (nn.Parameter, torch.Tensor)]


def return_freed_memory(model: nn.Module) -> None:
    """Let go of the float weights just replaced, so RSS reflects live memory.

    The loaded weights are memory-mapped from the safetensors cache: quantizing read every
    page of the linear layers' float weights, and those file pages stay resident (and counted
    in the process's RSS: 300 MB for the bundled model in 4-bit) as long as any tensor still
    maps the file, which the unquantized parameters (embeddings, norms) do. Copying those into
    memory of their own unmaps the file; glibc then hands freed heap pages back. On a GPU the
    replaced weights go back to the caching allocator's pool, which is emptied."""
    with torch.no_grad():
        for tensor in plain_tensors(model):
            if tensor.device.type == "cpu":  # a CUDA tensor maps no file
                tensor.data = tensor.data.clone()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
