"""The resource model: what a configuration's training peak memory is estimated to be.

    facts, tokenizer = model_facts(cfg, ["qv", "all-linear"])  # shapes only for hub models
    estimate_cfg(cfg, facts)                                    # MB

The estimate gates launches under ``--max-mem-mb`` and is compared with the measured peak in
the study's summary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_impl.inject import resolve_targets
from lora_impl.layer import base_layer_dims
from search_spaces import flat_leaves, is_distribution, sample_point
from study.config import TrialConfig
from study.models import REGISTRY, ModelNotFoundError, hub_error, load_model, quiet_hub


@dataclass(frozen=True)
class ModelFacts:
    """What the memory estimate and target checks need to know about the model."""

    total_params: int
    hidden: int
    layers: int
    vocab: int
    target_dims: dict[str, list[tuple[int, int]]]  # target spec -> (in, out) of each module


def model_facts(cfg: TrialConfig, target_specs: list) -> tuple[ModelFacts, object]:
    """Load (registry) or meta-build (hub) the model; resolve every target choice."""
    name = cfg.model.name
    if name in REGISTRY or Path(name).expanduser().is_dir() or "/" not in name:
        model, tokenizer = load_model(name)  # (an unknown name fails here, before any download)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        try:
            with quiet_hub():
                hf_config = AutoConfig.from_pretrained(name)
                tokenizer = AutoTokenizer.from_pretrained(name)
        except OSError as err:
            raise ModelNotFoundError(hub_error(name, err)) from None
        with torch.device("meta"):  # shapes and names only: no memory, no download of weights
            model = AutoModelForCausalLM.from_config(hf_config)
    dims = {}
    for spec in target_specs:
        target = TrialConfig.from_dict({"lora.targets": spec}).lora.target_spec
        names = resolve_targets(model, target)
        dims[spec] = [_in_out(model.get_submodule(n)) for n in names]
    c = model.config
    facts = ModelFacts(
        total_params=sum(p.numel() for p in model.parameters()),
        hidden=getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0),
        layers=getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 0),
        vocab=c.vocab_size,
        target_dims=dims,
    )
    return facts, tokenizer


def _in_out(module) -> tuple[int, int]:
    in_f, out_f, _ = base_layer_dims(module)
    return in_f, out_f


def estimate_peak_mb(
    total_params: int,
    trainable_params: int,
    bits: int,
    batch: int,
    seq_len: int,
    hidden: int,
    layers: int,
    vocab: int,
    overhead_mb: float = 450.0,
) -> float:
    """Rough training-phase peak (MB): weights + trainable state + activations + runtime.

    - frozen weights: 4 bytes/param at 16 bits (held in fp32 here), 1 at 8, 0.5 (+6%) at 4;
    - trainable parameters: fp32 weight, gradient and two Adam moments (16 bytes each);
    - activations: ~34 x hidden values per token per layer saved for backward (attention and
      MLP inputs/outputs, fp32), plus the logits of the target positions;
    - a fixed runtime overhead (CPU: interpreter and libraries; CUDA: context).
    """
    frozen = total_params - trainable_params
    weight_bytes = {16: 4.0, 8: 1.0, 4: 0.53}[bits] * frozen
    state_bytes = 16.0 * trainable_params
    tokens = batch * seq_len
    act_bytes = 34 * hidden * layers * tokens * 4 + tokens * vocab * 4 * 2
    return (weight_bytes + state_bytes + act_bytes) / 2**20 + overhead_mb


def estimate_cfg(cfg: TrialConfig, facts: ModelFacts) -> float:
    """Estimated training peak (MB) of a TrialConfig (see :func:`estimate_peak_mb`)."""
    if cfg.method == "lora":
        trainable = sum(cfg.lora.rank * (i + o) for i, o in facts.target_dims[cfg.lora.targets])
    else:
        trainable = facts.total_params if cfg.method == "full" else 0
    return estimate_peak_mb(
        facts.total_params,
        trainable,
        cfg.quant.bits,
        cfg.train.batch_size,
        cfg.data.seq_len,
        facts.hidden,
        facts.layers,
        facts.vocab,
    )


MEMORY_KEYS = (
    "method",
    "lora.rank",
    "lora.targets",
    "quant.bits",
    "train.batch_size",
    "data.seq_len",
)


def smallest_estimate(space: dict, facts: ModelFacts) -> float | None:
    """The lowest estimated peak (MB) over the memory-relevant choices of a space (None: none)."""
    leaves, point = flat_leaves(space), sample_point(space)
    options = {}
    for key in MEMORY_KEYS:
        leaf = leaves.get(key)
        if is_distribution(leaf):
            ((kind, values),) = leaf.items()
            options[key] = values if kind == "choice" else [values[0]]  # a range: its low end
    smallest = None
    for combo in itertools.product(*options.values()):
        try:
            cfg = TrialConfig.from_dict({**point, **dict(zip(options, combo))})
        except ValueError:
            continue  # e.g. full fine-tuning with a 4-bit choice: never launched anyway
        estimate = estimate_cfg(cfg, facts)
        smallest = estimate if smallest is None else min(smallest, estimate)
    return smallest


def estimator(facts: ModelFacts):
    """A function config dict (nested or dotted) -> estimated peak MB (the summary, the gate)."""
    return lambda config: estimate_cfg(TrialConfig.from_dict(config), facts)


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


def check_space_ranks(space: dict, facts: ModelFacts, model: str) -> None:
    """:func:`check_rank` for the largest rank a space can draw, with every target choice."""
    leaf = flat_leaves(space).get("lora.rank", TrialConfig().lora.rank)
    if is_distribution(leaf):
        ((_, values),) = leaf.items()
        numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        leaf = max(numbers, default=0)
    if not isinstance(leaf, int):
        return
    for spec, dims in facts.target_dims.items():
        check_rank(leaf, spec, dims, model)
