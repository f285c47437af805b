"""OrthoLoRA: an orthonormal-factor LoRA variant, the worked example of docs/VARIANTS.md.

    W' = W + s * Q_B diag(sigma) Q_A,   Q_A = qr(A^T).Q^T (r, in),  Q_B = qr(B).Q (out, r)

A and B are free parameters; at every forward they are re-orthonormalised through a QR
decomposition, so the update uses orthonormal factors (rows of Q_A, columns of Q_B) with a
learned diagonal ``sigma`` of singular values between them. ``sigma`` starts at zero, so the
layer starts as the base layer. This is the shape of the variant a master's thesis bolted onto
PEFT by hand; here it is one class.

Run it in a study from the command line (the directory of this file on PYTHONPATH, for the Ray
workers too: ``study.tune`` passes PYTHONPATH to them)::

    PYTHONPATH=docs/examples python -m study.tune --space smoke \\
        --set lora.variant=ortho_lora:OrthoLoRA --num-samples 2
"""

from __future__ import annotations

import torch
from torch import nn

from lora_impl import LoRALinear, LoraSpec


def orthonormal_factors(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q_A (r, in) with orthonormal rows, Q_B (out, r) with orthonormal columns).

    The signs are fixed by the diagonal of R (made positive), so the factors are a smooth
    function of A and B and do not flip between steps.
    """
    qa, ra = torch.linalg.qr(a.T)  # (in, r)
    qb, rb = torch.linalg.qr(b)  # (out, r)
    qa = qa * torch.sign(torch.diagonal(ra)).where(torch.diagonal(ra) != 0, 1.0)
    qb = qb * torch.sign(torch.diagonal(rb)).where(torch.diagonal(rb) != 0, 1.0)
    return qa.T, qb


class OrthoLoRA(LoRALinear):
    """LoRALinear whose update is ``s * Q_B diag(sigma) Q_A`` (see the module docstring).

    The interface a variant keeps (docs/VARIANTS.md): subclass LoRALinear, create extra trainable
    tensors as ``lora_*`` parameters, compute the update in ``forward`` and give it as a weight in
    ``delta_weight`` (merging and the PEFT export use it).
    """

    def __init__(self, base_layer: nn.Module, spec: LoraSpec) -> None:
        super().__init__(base_layer, spec)
        self.lora_sigma = nn.Parameter(torch.zeros(spec.rank, dtype=spec.dtype,
                                                   device=self.lora_A.weight.device))

    def reset_lora_parameters(self) -> None:
        """A and B random (both must have full rank for the QR); sigma, set in __init__, is 0."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=5 ** 0.5)
        nn.init.kaiming_uniform_(self.lora_B.weight, a=5 ** 0.5)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The orthonormal Q_A (r, in) and Q_B (out, r) of the current A and B."""
        return orthonormal_factors(self.lora_A.weight, self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """s * Q_B diag(sigma) Q_A in the base weight's layout."""
        qa, qb = self.factors()
        delta = (qb * self.lora_sigma) @ qa * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) + s * ((dropout(x) Q_A^T) * sigma) Q_B^T."""
        result = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        h = self.lora_dropout(x).to(self.lora_A.weight.dtype)
        qa, qb = self.factors()
        update = ((h @ qa.T) * self.lora_sigma) @ qb.T * self.scaling
        return (result + update).to(result.dtype)
