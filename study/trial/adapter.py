"""What a trial trains: the LoRA adapter (or the weights) it makes trainable, and the checks on
the adapter it is about to inject."""

from __future__ import annotations

import torch

from lora_impl import inject_lora, resolve_targets
from lora_impl.layer import base_layer_dims
from study.config import TrialConfig
from study.trial.models.classifier import HEAD


def prepare(model: torch.nn.Module, cfg: TrialConfig) -> None:
    """The adapter (or the trainable weights) and checkpointing; a classifier's head trains
    in full beside them (``base``: evaluated untrained)."""
    if cfg.method == "lora":
        names = resolve_targets(model, cfg.lora.target_spec)
        dims = [base_layer_dims(model.get_submodule(n))[:2] for n in names]
        check_rank(cfg.lora.rank, cfg.lora.targets, dims, cfg.model.name)
        inject_lora(model, cfg.lora.target_spec, cfg.lora.spec())
    else:
        for param in model.parameters():
            param.requires_grad_(cfg.method == "full")
    if cfg.data.task == "classify":
        getattr(model, HEAD).requires_grad_(cfg.method != "base")
    if cfg.train.grad_checkpointing and cfg.method != "base":
        # transformers 5 renamed it; the old name still works there, with a deprecation warning
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph


def check_rank(rank: int, targets: str, dims: list[tuple[int, int]], model: str) -> None:
    """ValueError unless ``rank`` fits every targeted layer: a rank above a layer's smaller
    dimension adds nothing an update of that layer can express, only memory (a typo such as
    1000000000 would try to allocate hundreds of GB)."""
    if not dims:
        return
    limit = min(min(i, o) for i, o in dims)
    if rank > limit:
        raise ValueError(
            f"lora.rank {rank} exceeds the smaller dimension of the layers lora.targets={targets} "
            f"selects in {model} ({limit}); use lora.rank <= {limit}"
        )
