"""The Qwen2-0.5B-shaped throughput probe of `make gpu-check`, shared by its benchmarks.

    probe = make_probe(torch.device("cuda"), tiny=False, batch=8, seq=512)
    probe.step()                                          # forward, loss, backward, AdamW
    mfu = tokens_per_s * flops_per_token(probe.config, 512, probe.lora_params) / dense_bf16_peak(
        torch.cuda.get_device_name())

A randomly initialised model of Qwen2-0.5B's config (no download), LoRA r8 on every linear
layer, one batch of random tokens; bf16 storage and autocast on CUDA, fp32 on the CPU. The model
FLOPs formula and the GPUs' dense bf16 peaks give the model-FLOPs utilisation (MFU) that
``bench/gpu_check.py`` (its probe), ``bench/gpu_throughput.py`` (our trial against the Trainer)
and ``bench/profile_step.py`` use. Not a script: nothing runs on import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# dense bf16 peak FLOP/s by device name (vendor datasheets, SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def qwen2_config(tiny: bool):
    """Qwen2-0.5B's architecture (its config.json's numbers), or a tiny one for dry runs."""
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                           tie_word_embeddings=True)
    return Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                       max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True)


def flops_per_token(config, seq: int, lora_params: int) -> float:
    """Model FLOPs of one LoRA training token: 2N forward and 2N backward (input gradients
    only: the base is frozen) over the matmul weights N (the tied head included), 6 per adapter
    weight, and attention's scores and values (4 L T d forward, twice that backward)."""
    d, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = d // config.num_attention_heads * config.num_key_value_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * i
    n = layers * per_layer + config.vocab_size * d
    return 4 * n + 6 * lora_params + 12 * layers * seq * d


def dense_bf16_peak(device_name: str) -> float | None:
    """The GPU's dense bf16 peak FLOP/s from its name (``PEAK_BF16``); None where unknown."""
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


@dataclass
class Probe:
    """The throughput probe, ready to step: LoRA all-linear r8 on a random Qwen2-shaped model,
    its AdamW, one batch, the autocast dtype (None: fp32)."""

    config: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: dict
    amp: torch.dtype | None
    lora_params: int

    def step(self) -> torch.Tensor:
        """One training step (forward, backward, AdamW); the loss."""
        from study.trial.train import causal_lm_loss

        with torch.autocast(self.model.device.type, dtype=self.amp or torch.float32,
                            enabled=self.amp is not None):
            loss, _ = causal_lm_loss(self.model, self.batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def make_probe(device: torch.device, tiny: bool, batch: int, seq: int) -> Probe:
    """The probe on ``device`` (``tiny``: the dry run's small Qwen2): 16-bit storage and bf16
    autocast on CUDA, fp32 on the CPU."""
    from transformers import Qwen2ForCausalLM

    from lora_impl import count_parameters, inject_lora

    config = qwen2_config(tiny)
    amp = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model.to(amp or torch.float32)  # 16-bit storage, as a 16-bit trial on CUDA has it
    inject_lora(model, "all-linear", rank=8, alpha=16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    return Probe(config, model, opt, data, amp, count_parameters(model)[0])
