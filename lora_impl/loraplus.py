"""LoRA+ (Hayou et al., 2024): B learns ``ratio`` times faster than A, in PEFT's parameter groups.

    optimizer = torch.optim.AdamW(loraplus_groups(model, lr=1e-4, ratio=16, weight_decay=0.01))

The groups are those of PEFT's ``create_loraplus_optimizer`` (``peft/optimizers/loraplus.py``):

- A: every trainable 2-D parameter that is not a ``lora_B`` (the ``lora_A`` matrices, a
  classification head's weight), at ``lr`` with ``weight_decay``;
- B: every ``lora_B`` and every trainable 1-D parameter (DoRA's magnitude, biases, a head's
  bias), at ``lr * ratio``, with ``weight_decay`` except for biases and parameters of LayerNorm
  modules (PEFT's ``groupB_no_decay``, weight decay 0).

PEFT's embedding group (LoRA on embedding layers) has no counterpart: lora_impl adapts linear
layers only. Empty groups are left out.
"""

from __future__ import annotations

from torch import nn


def _no_decay(model: nn.Module) -> set[str]:
    """Biases and the parameters of LayerNorm modules (transformers' ALL_LAYERNORM_LAYERS)."""
    names = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, nn.LayerNorm) or "bias" in full:
                names.add(full)
    return names


def loraplus_groups(model: nn.Module, lr: float, ratio: float, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups for LoRA+ (see the module docstring)."""
    no_decay = _no_decay(model)
    a, b, b_no_decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_B" in name or param.ndim == 1:
            (b_no_decay if name in no_decay else b).append(param)
        else:
            a.append(param)
    groups = [
        {"params": a, "lr": lr, "weight_decay": weight_decay},
        {"params": b, "lr": lr * ratio, "weight_decay": weight_decay},
        {"params": b_no_decay, "lr": lr * ratio, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
