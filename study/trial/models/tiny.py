"""Tiny random models for tests: 2-layer Llama, Qwen2, GPT-2 and GPT-NeoX with a byte tokenizer.

Seeded, so every load gives the same weights; they build in milliseconds and need no download.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ARCHITECTURES = ("llama", "qwen2", "gpt2", "neox")


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


def tiny_builder(arch: str, seed: int = 0) -> Callable[[Path], tuple[nn.Module, object]]:
    def build(_cache: Path) -> tuple[nn.Module, object]:
        from transformers import AutoModelForCausalLM

        tokenizer = tiny_tokenizer()
        config = _tiny_config(arch, len(tokenizer), tokenizer)
        with torch.random.fork_rng(devices=[]):  # same weights every load, global RNG untouched
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        return model.eval(), tokenizer

    return build
