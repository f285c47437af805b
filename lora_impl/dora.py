"""DoRALinear: weight-decomposed LoRA (Liu et al., 2024), as PEFT computes it.

    W' = m * (W + s B A) / ||W + s B A||_row        y = W' x + b

The weight is split into a direction (``W + s B A``, normalised per output row) and a trainable
magnitude ``m`` (one entry per output feature, ``lora_magnitude``), initialised to the row norms
of ``W``, so the initial layer is the base layer exactly (B = 0). As the paper (section 4.3) and
PEFT do, the norm is treated as a constant in backward: it is computed from a detached ``B A``
and detached itself, which saves the memory of its graph. The forward adds to the base output

    (m / n - 1) * (W x) + (m / n) * s * B A x,   n = ||W + s B A||_row (detached)

where ``W x`` is the base output without its bias (or, with dropout in training, ``W`` applied
to the dropped input, as PEFT does). A 4- or 8-bit base is dequantized for the norm and for
merging; merging writes ``W'`` into the base and keeps the original weight for a bitwise
unmerge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lora_impl.layer import LoRALinear, LoraSpec
from lora_impl.quant import base_weight


class DoRALinear(LoRALinear):
    """LoRALinear plus DoRA's magnitude vector (see the module docstring)."""

    merge_keeps_base = True  # W' is not W + delta alone: unmerge restores the kept original

    def __init__(self, base_layer: nn.Module, spec: LoraSpec) -> None:
        super().__init__(base_layer, spec)
        with torch.no_grad():
            norm = self._weight_norm(base_weight(base_layer).float())
        self.lora_magnitude = nn.Parameter(norm.to(spec.dtype))

    def _weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """||W + s B A|| per output row, from a detached B A (no gradient through the norm)."""
        lora = (self.lora_B.weight @ self.lora_A.weight).detach().to(weight.dtype)
        return torch.linalg.norm(weight + self.scaling * lora, dim=1).to(weight.dtype)

    def delta_weight(self) -> torch.Tensor:
        """W' - W in the base weight's layout: what merging adds to the base weight."""
        weight = base_weight(self.base_layer).float()
        lora = (self.lora_B.weight @ self.lora_A.weight).float() * self.scaling
        factor = (self.lora_magnitude.float() / self._weight_norm(weight)).view(-1, 1)
        delta = factor * (weight + lora) - weight
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) plus DoRA's correction (module docstring), or base(x) merged / disabled."""
        result = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        dropped = self.training and not isinstance(self.lora_dropout, nn.Identity)
        h = self.lora_dropout(x) if dropped else x
        if h.dtype != self.lora_A.weight.dtype and not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.lora_A.weight.dtype)
        weight = base_weight(self.base_layer).to(h.dtype)
        norm = self._weight_norm(weight).detach()
        scale = (self.lora_magnitude / norm).view(1, -1)
        lora_result = self.lora_B(self.lora_A(h))
        if dropped:
            base_result = F.linear(h, weight)
        else:
            bias = getattr(self.base_layer, "bias", None)
            base_result = result - bias if bias is not None else result
        extra = (scale - 1) * base_result + scale * lora_result * self.scaling
        return (result + extra).to(result.dtype)
