"""Adapter initialisations that start from the base weight: PiSSA and OLoRA, as PEFT does them.

Both factor the base weight W (out, in), put ``s * B0 A0`` in the adapter and leave the residual
``W - s * B0 A0`` in the base, so the layer starts as the base layer (up to rounding):

- ``pissa`` (Meng et al., 2024): the r principal singular triplets, W = V S U^T;
  A0 = sqrt(S_r / s) U_r^T, B0 = V_r sqrt(S_r / s). ``pissa_niter_K``: the same from
  ``torch.svd_lowrank`` with K subspace iterations (randomised: seeded by torch's RNG);
- ``olora`` (Büyükakyüz, 2024): the QR decomposition W = Q R; A0 = R[:r], B0 = Q[:, :r].

A0 and B0 are kept (``init_A``, ``init_B``; not saved: re-derived from the same base and seed on
resume) because the exported adapter follows PEFT's conversion to a plain LoRA that applies to
the *original* base: rank 2r, A' = [A; A0], B' = [B, -B0], alpha doubled (times sqrt(2) with
rsLoRA), since W_res + s B A = W + s (B A - B0 A0). Where PEFT has no working path the init is
refused in one line: PiSSA on a 4- or 8-bit base (PEFT: "initialize PiSSA under float32, float16,
or bfloat16"), OLoRA on GPT-2's Conv1D (PEFT factors the stored (in, out) weight, then fails).
OLoRA on a 4- or 8-bit base dequantizes W and re-quantizes the residual, as PEFT does.
"""

from __future__ import annotations

import re

import torch

from lora_impl.quant import base_weight, quant_kind, write_quantized

BASIC = ("kaiming", "gaussian")
FROM_WEIGHT = re.compile(r"pissa|pissa_niter_[1-9]\d*|olora")
NAMES = "kaiming, gaussian, pissa, pissa_niter_K (K >= 1) or olora"


def check_init(init: object) -> str | None:
    """Why ``init`` is no init name (one line), or None."""
    if isinstance(init, str) and (init in BASIC or FROM_WEIGHT.fullmatch(init)):
        return None
    return f"lora.init must be one of {NAMES}, got {init!r}"


def from_weight(init: str) -> bool:
    """Whether ``init`` factors the base weight (and changes the base to the residual)."""
    return bool(FROM_WEIGHT.fullmatch(init))


def refusal(init: str, kind: str | None = None, conv1d: bool = False) -> str | None:
    """Why ``init`` cannot start from a base of this ``kind`` ("4bit", "8bit", None: float) or
    from GPT-2's Conv1D layers (one line), or None: where PEFT has no working path. A study
    asks before it starts (study.config, study.cost.estimate); the layer asks again as it inits."""
    if init.startswith("pissa") and kind:
        return (f"lora.init {init} on a {kind} base is not supported (PEFT initialises PiSSA "
                "on 16/32-bit weights only): use quant.bits 16, or init olora")
    if init == "olora" and conv1d:
        return ("lora.init olora on GPT-2's Conv1D layers is not supported (PEFT has no "
                "working path there): use pissa or kaiming for this model")
    return None


def _float_weight(layer) -> torch.Tensor:
    return base_weight(layer.base_layer).detach().float().clone()  # (out, in)


def _write_residual(layer, residual: torch.Tensor, kind: str | None) -> None:
    if kind:
        write_quantized(layer.base_layer, residual)
    else:
        base = layer.base_layer
        layout = residual.T if layer.fan_in_fan_out else residual
        base.weight.data.copy_(layout.to(base.weight.dtype))


def init_from_weight(layer) -> None:
    """Set ``layer``'s A and B from its base weight and the base to the residual (module)."""
    init, r, s = layer.init, layer.rank, layer.scaling
    kind = quant_kind(layer.base_layer)
    if problem := refusal(init, kind, conv1d=layer.fan_in_fan_out):
        raise ValueError(problem)
    weight = _float_weight(layer)
    if init == "olora":
        q, rr = torch.linalg.qr(weight)
        a, b = rr[:r], q[:, :r]
    else:
        if init == "pissa":
            v, sv, uh = torch.linalg.svd(weight, full_matrices=False)
            v, sv, uh = v[:, :r], sv[:r] / s, uh[:r]
        else:
            niter = int(init.split("_niter_")[1])
            v, sv, u = torch.svd_lowrank(weight, r, niter=niter)
            sv, uh = sv / s, u.t()
        a = torch.diag(torch.sqrt(sv)) @ uh
        b = v @ torch.diag(torch.sqrt(sv))
    with torch.no_grad():
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b)
    _write_residual(layer, weight - s * b @ a, kind)
    layer.register_buffer("init_A", a.to(layer.spec.dtype).clone(), persistent=False)
    layer.register_buffer("init_B", b.to(layer.spec.dtype).clone(), persistent=False)
