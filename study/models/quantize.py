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

QUANT_BITS = (4, 8, 16)
QUANT_TYPES = ("nf4", "fp4")


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
    model: nn.Module,
    bits: int,
    quant_type: str = "nf4",
    double_quant: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> list[str]:
    """Replace every linear except the output head by a bitsandbytes layer; return the names.

    GPT-2's ``Conv1D`` (weight stored (in, out)) becomes a bnb Linear with the transposed weight.
    """
    bnb = import_bitsandbytes()
    from lora_impl.layer import is_conv1d, is_linear_like, quant_kind

    head = model.get_output_embeddings()
    replaced = []
    for name, module in list(model.named_modules()):
        if module is head or not is_linear_like(module) or quant_kind(module) is not None:
            continue
        weight = module.weight.data
        if is_conv1d(module):
            weight = weight.t()
        out_features, in_features = weight.shape
        device = weight.device
        has_bias = module.bias is not None
        if bits == 8:
            new = bnb.nn.Linear8bitLt(
                in_features,
                out_features,
                bias=has_bias,
                has_fp16_weights=False,
                threshold=0.0,
                device="meta",
            )
            new.weight = bnb.nn.Int8Params(
                weight.contiguous(), requires_grad=False, has_fp16_weights=False
            ).to(device)
        else:
            new = bnb.nn.Linear4bit(
                in_features,
                out_features,
                bias=has_bias,
                compute_dtype=compute_dtype,
                compress_statistics=double_quant,
                quant_type=quant_type,
                device="meta",
            )
            new.weight = bnb.nn.Params4bit(
                weight.contiguous(),
                requires_grad=False,
                compress_statistics=double_quant,
                quant_type=quant_type,
                module=new,
            ).to(device)
            # On AVX512-BF16 CPUs bnb re-packs a 4-bit weight at its first eval-mode forward
            # and rounds the block scales to bf16 in place: the base model would silently
            # change after the first evaluation. Keep the weights as quantized.
            new.support_avx512bf16_for_cpu = False
        if has_bias:
            new.bias = nn.Parameter(module.bias.data.clone(), requires_grad=False)
        new.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        replaced.append(name)
    return replaced


def return_freed_memory(model: nn.Module) -> None:
    """Let go of the float weights just replaced, so RSS reflects live memory.

    The loaded weights are memory-mapped from the safetensors cache: quantizing read every
    page of the linear layers' float weights, and those file pages stay resident (and counted
    in the process's RSS: 300 MB for the bundled model in 4-bit) as long as any tensor still
    maps the file, which the unquantized parameters (embeddings, norms) do. Copying those into
    memory of their own unmaps the file; glibc then hands freed heap pages back."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if type(tensor) in (nn.Parameter, torch.Tensor):  # not bitsandbytes' own
                tensor.data = tensor.data.clone()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
