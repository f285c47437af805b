"""LoRALinear: a low-rank adapter wrapped around any linear-like base layer.

    y = W0 x + s * B A dropout(x),   s = alpha / r   (rsLoRA: s = alpha / sqrt(r))

W0 stays frozen inside ``base_layer`` (``nn.Linear``, transformers' GPT-2 ``Conv1D`` whose weight
is stored transposed, or a bitsandbytes ``Linear8bitLt`` / ``Linear4bit``); only ``lora_A``
(r, in) and ``lora_B`` (out, r) train. Composition rather than inheritance is what lets one
forward serve plain and quantized bases alike (PEFT's design, not loralib's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lora_impl.inits import check_init, from_weight, init_from_weight
from lora_impl.quant import is_conv1d


@dataclass(frozen=True)
class LoraSpec:
    """One adapter's hyperparameters, validated on construction (so every holder may trust them).

    The update is ``s * B @ A`` with A (r, in), B (out, r) and ``s = alpha / r``, or
    ``s = alpha / sqrt(r)`` with rsLoRA, whose scale keeps the update's magnitude from shrinking
    as r grows. Targets are not part of a spec: they are resolved against a model.

    Raises:
        ValueError: a bad field; the message names it and its allowed values, as in
            ``lora.rank must be a positive integer, got 0``.
    """

    rank: int
    """r, the inner dimension of the update B @ A: a positive integer."""
    alpha: float
    """The scale numerator, a number > 0: scaling = alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: float = 0.0
    """Dropout probability on the adapter's input only, in [0, 1)."""
    rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r."""
    init: str = "kaiming"
    """A's init: kaiming (uniform, a=sqrt(5), PEFT's default) or gaussian (N(0, 1/r)), B zero;
    or pissa, pissa_niter_K, olora: A and B from the base weight, which keeps the residual
    (lora_impl.inits)."""
    dtype: torch.dtype = torch.float32
    """dtype of the adapter weights, whatever the base layer's dtype."""
    variant: str = "lora"
    """The layer: lora, dora (weight-decomposed, a magnitude per output) or module:Class, a
    user's LoRALinear subclass (lora_impl.variants, docs/VARIANTS.md)."""

    def __post_init__(self) -> None:
        rank, alpha, dropout = self.rank, self.alpha, self.dropout
        _require(
            isinstance(rank, int) and not isinstance(rank, bool) and rank > 0,
            "rank",
            rank,
            "a positive integer",
        )
        _require(
            _is_number(alpha) and math.isfinite(alpha) and alpha > 0, "alpha", alpha, "a number > 0"
        )
        _require(_is_number(dropout) and 0 <= dropout < 1, "dropout", dropout, "in [0, 1)")
        _require(isinstance(self.rslora, bool), "rslora", self.rslora, "true or false")
        for problem in (check_init(self.init), check_variant(self.variant)):
            if problem:
                raise ValueError(problem)
        if self.variant == "dora" and from_weight(self.init):
            raise ValueError(
                f"lora.init {self.init} with lora.variant dora is not supported: PEFT's export "
                "of a PiSSA / OLoRA adapter (a converted plain LoRA) cannot carry DoRA's "
                "magnitude; use init kaiming or gaussian with dora"
            )
        _require(
            isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point,
            "dtype",
            self.dtype,
            "a floating-point torch.dtype",
        )

    @property
    def scaling(self) -> float:
        """s in ``s * B @ A``: alpha / rank, or alpha / sqrt(rank) with rslora."""
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank


BUILTIN_VARIANTS = ("lora", "dora")
USER_VARIANT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # module:Class


def check_variant(name: object) -> str | None:
    """Why ``name`` is no variant name (one line), or None: a built-in or ``module:Class``
    (``lora_impl.variants`` finds the class)."""
    if isinstance(name, str) and (name in BUILTIN_VARIANTS or USER_VARIANT.fullmatch(name)):
        return None
    return (f"lora.variant must be one of {', '.join(BUILTIN_VARIANTS)} or module:Class (a "
            f"LoRALinear subclass in an importable module), got {name!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, field: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"lora.{field} must be {allowed}, got {value!r}")


def is_linear_like(module: nn.Module) -> bool:
    """True for the base layers LoRALinear can wrap (bnb layers subclass ``nn.Linear``)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def base_layer_dims(base: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of a supported base layer."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features, False
    if is_conv1d(base):
        in_features, out_features = base.weight.shape
        return in_features, out_features, True
    raise TypeError(
        f"LoRALinear wraps nn.Linear, transformers Conv1D or bitsandbytes Linear8bitLt/Linear4bit, "
        f"not {type(base).__name__}"
    )


class LoRALinear(nn.Module):
    """A frozen base linear plus a trainable low-rank update ``s * B @ A`` (see :class:`LoraSpec`).

    Args:
        base_layer: the layer to adapt; it is kept as ``self.base_layer`` and never modified
            except by :func:`lora_impl.merge`.
        spec: the adapter's hyperparameters (already validated); kept as ``self.spec``. A is
            initialised per ``spec.init`` and B is zero, so the initial update is exactly zero.

    Raises:
        TypeError: ``spec`` is not a LoraSpec, or an unsupported base layer.
    """

    mergeable = True  # a variant whose update cannot be folded into W sets False
    merge_keeps_base = False  # True: merge keeps W itself, as W' - W depends on W (DoRA)

    def __init__(self, base_layer: nn.Module, spec: LoraSpec) -> None:
        super().__init__()
        if not isinstance(spec, LoraSpec):
            raise TypeError(f"LoRALinear takes a LoraSpec, got {type(spec).__name__}")
        in_features, out_features, fan_in_fan_out = base_layer_dims(base_layer)
        self.spec = spec
        self.base_layer = base_layer
        self.in_features, self.out_features = in_features, out_features
        self.fan_in_fan_out = fan_in_fan_out
        rank, dtype = spec.rank, spec.dtype
        device = _weight_device(base_layer)
        self.lora_dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        # B is (out, r) as in PEFT, but stored r-major (strides (1, out)). Its gradient is then
        # computed as h^T @ grad, a wide (r, N) x (N, out) GEMM, instead of grad^T @ h, a
        # tall-skinny one that MKL runs ~4x slower on CPU (see docs/BENCHMARKS.md).
        self.lora_B.weight = nn.Parameter(
            torch.empty(rank, out_features, device=device, dtype=dtype).t()
        )
        self.merged = False
        self.disabled = False
        self._unmerged_base: dict | None = None  # quantized originals kept while merged
        self.reset_lora_parameters()

    @property
    def rank(self) -> int:
        """r, from the spec."""
        return self.spec.rank

    @property
    def alpha(self) -> float:
        """The scale numerator, from the spec."""
        return self.spec.alpha

    @property
    def rslora(self) -> bool:
        """Whether scaling is rank-stabilised, from the spec."""
        return self.spec.rslora

    @property
    def init(self) -> str:
        """A's initialisation scheme, from the spec."""
        return self.spec.init

    @property
    def scaling(self) -> float:
        """s in ``s * B @ A``, from the spec."""
        return self.spec.scaling

    @property
    def dropout(self) -> float:
        """The adapter dropout probability, from the spec."""
        return self.spec.dropout

    def reset_lora_parameters(self) -> None:
        """Initialise A (Kaiming-uniform or Gaussian) and set B to zero, as PEFT does; or both
        from the base weight (PiSSA, OLoRA: ``lora_impl.inits``)."""
        if from_weight(self.init):
            init_from_weight(self)
            return
        if self.init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        else:
            nn.init.normal_(self.lora_A.weight, std=1 / self.rank)
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """s * B @ A in the base weight's layout: (out, in), or (in, out) for Conv1D."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) + s * B(A(dropout(x))), or base(x) alone when merged or disabled."""
        result = self.base_layer(x)  # (..., out)
        if self.merged or self.disabled:
            return result
        h = self.lora_dropout(x)
        if h.dtype != self.lora_A.weight.dtype and not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.lora_A.weight.dtype)
        # The same operations in the same order as PEFT, so the forward agrees with it bitwise:
        # an 8-bit base rounds its input to fp16 and int8, which would turn a 1-ulp difference
        # upstream into visible differences downstream.
        delta = self.lora_B(self.lora_A(h)) * self.scaling  # (..., r) -> (..., out)
        return (result + delta).to(result.dtype)

    def extra_repr(self) -> str:
        """rank, alpha, scaling, dropout and merged, for ``print(model)``."""
        return (
            f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}, "
            f"dropout={self.dropout}, merged={self.merged}"
        )


def _weight_device(module: nn.Module) -> torch.device:
    weight = getattr(module, "weight", None)
    return weight.device if weight is not None else torch.device("cpu")


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """Yield (qualified name, layer) for every LoRALinear in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base alone inside the block (baselines, DPO references).

    Raises:
        ValueError: an adapter is merged (its update is inside the base weight); unmerge first.
    """
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged for layer in layers):
        raise ValueError("cannot disable merged adapters: call lora_impl.unmerge(model) first")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was_disabled in zip(layers, previous):
            layer.disabled = was_disabled
