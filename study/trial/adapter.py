"""What a trial trains: the LoRA adapter (or the weights) it makes trainable, and the checks on
the adapter it is about to inject."""

from __future__ import annotations

import torch

from lora_impl import adapter_weights_file, inject_lora, load_adapter_weights, resolve_targets
from lora_impl.io import read_adapter_config, spec_from_peft_config
from lora_impl.layer import base_layer_dims
from study.config import TrialConfig
from study.trial.models.classifier import HEAD


def prepare(model: torch.nn.Module, cfg: TrialConfig) -> None:
    """The adapter (or the trainable weights) and checkpointing; a classifier's head trains
    in full beside them (``base``: evaluated untrained)."""
    if cfg.method == "lora" or cfg.lora.init_from:  # base with init_from: that adapter, untrained
        names = resolve_targets(model, cfg.lora.target_spec)
        dims = [base_layer_dims(model.get_submodule(n))[:2] for n in names]
        check_rank(cfg.lora.rank, cfg.lora.targets, dims, cfg.model.name)
        check_start(cfg)  # the adapter's config: one line before the model is touched
        inject_lora(model, cfg.lora.target_spec, cfg.lora.spec())
        if cfg.lora.init_from:
            start_from(model, cfg.lora.init_from)
    if cfg.method != "lora":
        for param in model.parameters():
            param.requires_grad_(cfg.method == "full")
    if cfg.data.task == "classify":
        getattr(model, HEAD).requires_grad_(cfg.method != "base")
    if cfg.train.grad_checkpointing and cfg.method != "base":
        # transformers 5 renamed it; the old name still works there, with a deprecation warning
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph


def check_start(cfg: TrialConfig) -> None:
    """ValueError (one line) unless ``lora.init_from`` is unset or an adapter directory whose
    rank, alpha, scaling and variant are the trial's (its targets and shapes are checked against
    the model when it loads: ``start_from``)."""
    path = cfg.lora.init_from
    if not path:
        return
    try:
        config = read_adapter_config(path)
        if not adapter_weights_file(path).is_file():
            raise ValueError(f"no {adapter_weights_file(path).name} in it")
        theirs = spec_from_peft_config(config)
    except ValueError as err:
        raise ValueError(f"lora.init_from={path} is not a usable adapter: {err}") from None
    ours = cfg.lora.spec()
    for field, name, value, mine in (
            ("r", "lora.rank", theirs.rank, ours.rank),
            ("lora_alpha", "lora.alpha", theirs.alpha, ours.alpha),
            ("use_rslora", "lora.rslora", theirs.rslora, ours.rslora),
            ("use_dora", "lora.variant=dora", theirs.variant == "dora", ours.variant == "dora")):
        if float(value) != float(mine):
            raise ValueError(f"lora.init_from={path}: the adapter's {field} is {value}, the "
                             f"trial's {name} gives {mine}: set {name} to match it")


def start_from(model: torch.nn.Module, path: str) -> None:
    """The injected adapters start from the adapter saved at ``path`` (``lora.init_from``):
    ValueError, one line naming it, when it is not an adapter or does not fit them."""
    try:
        load_adapter_weights(model, path)
    except ValueError as err:
        raise ValueError(f"lora.init_from={path}: {err}") from None


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
