"""The resource model: what a configuration's training peak memory is estimated to be.

    facts, tokenizer = model_facts(cfg, ["qv", "all-linear"])  # shapes only for hub models
    estimate_cfg(cfg, facts)                                    # MB

One function serves the plan's check, the search's memory constraint and the summary's error
line. The peak of the training phase is the sum of what the loop really holds:

- the runtime (interpreter, torch and the libraries, allocator slack): ``RUNTIME_MB``;
- the weights as stored: unquantized parameters at their dtype, quantized linears at 1 byte
  (8-bit) or 0.5 byte plus one fp32 absmax per 64 (4-bit), the output head and embeddings never
  quantized; on CPU, what the process keeps per quantized weight beyond that
  (``study.cost.host``, measured);
- the trainable state: AdamW's two fp32 moments and the fp32 gradient of each trainable
  parameter, plus the fp32 weight of an adapter;
- what autograd keeps for backward for the largest micro-batch the trial will see (its real
  padded length and target count, from the task's data and the batch order), counted by
  ``study.cost.activations`` on the real loss with the trial's adapter, quantization, precision and
  checkpointing, times ``BACKWARD`` for the gradients backward holds next to it; except the
  low-precision copies of weights that linear layers keep under bf16 autocast, counted once
  (held like weights: no gradient of their size is written beside them).

``RUNTIME_MB`` and ``BACKWARD`` are the two numbers measured rather than counted: fitted on this
repository's measurements (``bench/memory_model.py``, docs/BENCHMARKS.md), in plain processes;
a study's trial forked from the study's fork server (``study.forkserver``) peaks like one, while
a trial that runs in its Ray worker (GPU, a joined cluster) holds ``RAY_WORKER_MB`` more
(measured): ``worker_mb(forked)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_impl.inits import refusal
from lora_impl.inject import resolve_targets
from lora_impl.layer import base_layer_dims, is_linear_like
from lora_impl.quant import is_conv1d
from search_spaces import choice_points, flat_leaves, is_distribution
from study.config import TrialConfig
from study.cost.activations import saved_bytes
from study.cost.host import host_quant_bytes, shapes_bytes
from study.cost.workload import workload
from study.trial import precision
from study.trial.adapter import check_rank
from study.trial.models import REGISTRY, ModelNotFoundError, hub_error, load_model, quiet_hub

RUNTIME_MB = 311.0
BACKWARD = 2.40
# What a study's trial process holds beyond a plain one (``study.train_one``): Ray's core worker
# and Tune's trainable machinery. Measured on the bundled model, the demo's rank-4 qkvo 16-bit
# trial (40 steps, an evaluation at 20): peaks of 2267-2381 MB (mean 2316) in four studies
# against 2012 MB in study.train_one, start_mem_mb 658 against 405 (docs/BENCHMARKS.md).
RAY_WORKER_MB = 300.0
# A forked trial (the demo, 2026-12-04): peaks within -7% to +10% of the plain-process estimate
# for its 4/16-bit and full trials (8-bit -18%, as in plain processes, before HOST_QUANT_BYTES):
# no worker term.
# How far above its estimate a trial's measured peak went at most, as a share of the estimate,
# per method and bits. --max-mem-mb judges the estimate plus this band, never the estimate
# alone: an estimate below the peak admits a configuration that then runs out. Measured on this
# repository's CPU runs of the bundled model with glibc's allocator (docs/BENCHMARKS.md, "Memory
# over a whole trial"), estimates as now: 16-bit LoRA up to 5.3% above (the SFT trials of
# bench/dpo_after_sft.py, 150 steps; the long-trial set's skills trial 3.6% to 450 steps), full
# fine-tuning 4.8% (a demo's baseline). The 4/8-bit terms (HOST_QUANT_BYTES) are fitted to the
# highest peak of one long trial each, so their own rise is not known better than 16-bit's: they
# take its band.
BAND = {("lora", 16): 0.06, ("lora", 8): 0.06, ("lora", 4): 0.06, ("full", 16): 0.05}
QUANT_BYTES = {8: 1.0, 4: 0.5 + 4 / 64}  # per quantized weight (int8; nf4/fp4 + fp32 absmax)
ADAM_BYTES = 12.0  # fp32 gradient and two fp32 moments per trainable parameter


@dataclass(frozen=True)
class ModelFacts:
    """What the memory estimate and target checks need to know about the model."""

    total_params: int
    hidden: int
    layers: int
    vocab: int
    target_dims: dict[str, list[tuple[int, int]]]  # target spec -> (in, out) of each module
    linear_params: int = 0  # weights of the linear layers a 4/8-bit base quantizes
    param_bytes: float = 4.0  # bytes per unquantized parameter as loaded
    untied_head: int = 0  # the output head's weights when not shared with the embeddings
    conv1d: bool = False  # the targets are GPT-2's Conv1D layers (no OLoRA init there)
    hf_config: object = field(default=None, compare=False, repr=False)
    tokenizer: object = field(default=None, compare=False, repr=False)


# A study's facts: one per model it can run (``model.name`` may be a searched factor).
Facts = Mapping[str, ModelFacts]


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
    dims, conv1d = {}, False
    for spec in target_specs:
        target = TrialConfig.from_dict({"lora.targets": spec}).lora.target_spec
        names = resolve_targets(model, target)
        dims[spec] = [_in_out(model.get_submodule(n)) for n in names]
        conv1d = conv1d or any(is_conv1d(model.get_submodule(n)) for n in names)
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules() if is_linear_like(m) and m is not head)
    tied = head is None or head.weight is model.get_input_embeddings().weight
    c = model.config
    facts = ModelFacts(
        total_params=sum(p.numel() for p in model.parameters()),
        hidden=getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0),
        layers=getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 0),
        vocab=c.vocab_size,
        target_dims=dims,
        linear_params=linear,
        param_bytes=float(next(model.parameters()).element_size()),
        untied_head=0 if tied else head.weight.numel(),
        conv1d=conv1d,
        hf_config=c,
        tokenizer=tokenizer,
    )
    return facts, tokenizer


def _in_out(module) -> tuple[int, int]:
    in_f, out_f, _ = base_layer_dims(module)
    return in_f, out_f


def largest_batch(cfg: TrialConfig, tokenizer) -> tuple[int, int, int]:
    """(rows, padded length, target tokens) of the largest micro-batch ``cfg`` trains on: the
    same examples, batch order and padding as the loop (``study.cost.workload``)."""
    return workload(cfg, tokenizer).largest


def compute_precision(cfg: TrialConfig, facts: ModelFacts) -> torch.dtype | None:
    """The autocast dtype the trial will run in (``train.dtype=auto``: measured, cached)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.dtype != "auto":
        return precision.AMP.get(cfg.train.dtype)
    tokens = cfg.train.batch_size * cfg.data.seq_len
    return precision.resolve("auto", device, precision.matmul_shape(facts.hf_config, tokens)).amp


def storage_bytes(cfg: TrialConfig, facts: ModelFacts) -> float:
    """Bytes per float base parameter as the trial stores them (``precision.storage_dtype``):
    as loaded on CPU; on CUDA the 16-bit compute dtype's 2, or 4 for fp32 and full tuning."""
    if not torch.cuda.is_available():
        return facts.param_bytes
    amp = compute_precision(cfg, facts)
    name = next((k for k, v in precision.AMP.items() if v == amp), "fp32")
    dtype = precision.storage_dtype(torch.device("cuda"), name, cfg.method)
    return float(torch.empty(0, dtype=dtype).element_size())


def adapter_params(cfg: TrialConfig, facts: ModelFacts) -> int:
    """Parameters of ``cfg``'s adapter (A and B of every targeted layer); 0 unless LoRA."""
    if cfg.method != "lora":
        return 0
    dims = facts.target_dims[cfg.lora.targets]
    magnitude = sum(o for _, o in dims) if cfg.lora.variant == "dora" else 0  # one per output
    return sum(cfg.lora.rank * (i + o) for i, o in dims) + magnitude


def head_params(cfg: TrialConfig, facts: ModelFacts) -> int:
    """The classify task's score head (hidden x labels, trained in full); 0 for other tasks."""
    if cfg.data.task != "classify":
        return 0
    return facts.hidden * workload(cfg, facts.tokenizer).classes


def estimate_parts(cfg: TrialConfig, facts: ModelFacts) -> tuple[float, float]:
    """(weights and trainable state, what autograd keeps for the largest micro-batch) in bytes.
    A classifier holds the body without the causal LM's own head and an fp32 score head."""
    frozen_linear = facts.linear_params if cfg.quant.bits != 16 else 0
    params = facts.total_params
    head = head_params(cfg, facts)
    if cfg.data.task == "classify":
        params -= facts.untied_head
    weights = (params - frozen_linear) * storage_bytes(cfg, facts) + head * 4.0
    amp = compute_precision(cfg, facts)
    if frozen_linear:
        weights += frozen_linear * (QUANT_BYTES[cfg.quant.bits] + host_quant_bytes(cfg, amp))
    if cfg.method == "base":
        return weights, 0.0
    if cfg.method == "lora":
        state = adapter_params(cfg, facts) * (4.0 + ADAM_BYTES) + head * ADAM_BYTES
        if cfg.lora.variant == "dora":  # each forward's fp32 W (dequantized) and W + s B A
            state += 2 * 4.0 * max(i * o for i, o in facts.target_dims[cfg.lora.targets])
    else:
        state = (params + head) * ADAM_BYTES
    graph = saved_bytes(facts.hf_config, cfg, amp)
    kept = graph.total(*largest_batch(cfg, facts.tokenizer))
    return weights + state + graph.casts + shapes_bytes(cfg, facts, graph, amp), kept


def combine(cfg: TrialConfig, facts: ModelFacts, held: float, kept: float,
            runtime_mb: float | None = None, backward: float | None = None) -> float:
    """The peak (MB) from the held state and the kept activations (bytes). Backward adds to
    what autograd keeps its gradients with respect to the activations and the allocator's
    fragments of them: ``BACKWARD`` x kept in all (measured). In full fine-tuning the weights'
    gradients are written in the same phase, into the space those free: the larger of the two
    counts, not their sum (the held state otherwise counts the gradients)."""
    runtime_mb = RUNTIME_MB if runtime_mb is None else runtime_mb
    backward = BACKWARD if backward is None else backward
    if cfg.method != "full":
        return runtime_mb + (held + backward * kept) / 2**20
    grads = facts.total_params * 4.0
    extra = (backward - 1.0) * kept
    return runtime_mb + (held - grads + kept + max(grads, extra)) / 2**20


def band(cfg: TrialConfig) -> float:
    """The estimate's measured error band for ``cfg``'s method and bits (``BAND``; the base,
    which trains nothing, as LoRA's): the share by which its peak may exceed the estimate."""
    method = "full" if cfg.method == "full" else "lora"
    return BAND.get((method, cfg.quant.bits), max(BAND.values()))


def gate_cfg(cfg: TrialConfig, facts: ModelFacts, worker_mb: float = RAY_WORKER_MB) -> float:
    """What --max-mem-mb judges (MB): the estimate plus its error band (``band``)."""
    return estimate_cfg(cfg, facts, worker_mb) * (1.0 + band(cfg))


def worker_mb(forked: bool) -> float:
    """What a study's trial process holds beyond a plain one: nothing when it is forked from
    the fork server, ``RAY_WORKER_MB`` when it runs in its Ray worker."""
    return 0.0 if forked else RAY_WORKER_MB


def estimate_cfg(cfg: TrialConfig, facts: ModelFacts, worker_mb: float = RAY_WORKER_MB) -> float:
    """Estimated training-phase peak (MB) of a TrialConfig (see the module docstring) in a
    study's trial process run in its Ray worker; ``worker_mb=0``: in a plain process
    (``study.train_one``) or a forked trial (``worker_mb(forked)``)."""
    held, kept = estimate_parts(cfg, facts)
    return combine(cfg, facts, held, kept) + worker_mb


MEMORY_KEYS = (
    "model.name",
    "method",
    "lora.rank",
    "lora.targets",
    "lora.variant",
    "quant.bits",
    "quant.scheme",
    "train.batch_size",
    "data.seq_len",
)


def smallest_estimate(space: dict, facts: Facts, extra_mb: float = RAY_WORKER_MB
                      ) -> float | None:
    """The lowest gated estimate (MB, with its band: ``gate_cfg``) over the memory-relevant
    choices of a space (None: none); ``facts``: each model's."""
    smallest = None
    for point in choice_points(space, MEMORY_KEYS):
        try:
            cfg = TrialConfig.from_dict(point)
        except ValueError:
            continue  # e.g. full fine-tuning with a 4-bit choice: never launched anyway
        estimate = gate_cfg(cfg, facts[cfg.model.name], extra_mb)
        smallest = estimate if smallest is None else min(smallest, estimate)
    return smallest


def estimator(facts: Facts, extra_mb: float = RAY_WORKER_MB, gate: bool = False):
    """A function config dict (nested or dotted) -> estimated peak MB (the summary), with the
    facts of the config's model; ``gate``: plus its band (``gate_cfg``, what --max-mem-mb
    judges); ``extra_mb``: ``worker_mb(forked)`` of the study's trials."""
    one = gate_cfg if gate else estimate_cfg

    def estimate(config: dict) -> float:
        cfg = TrialConfig.from_dict(config)
        return one(cfg, facts[cfg.model.name], extra_mb)

    return estimate


def band_of(config: dict) -> float:
    """``band`` of a config dict (the summary prints it beside each estimate)."""
    return band(TrialConfig.from_dict(config))


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


def check_space_inits(space: dict, facts: ModelFacts) -> None:
    """``lora_impl.inits.refusal`` for every init a space can draw, on this model's layers (a
    ValueError before the study starts, not an error in every trial)."""
    leaf = flat_leaves(space).get("lora.init", TrialConfig().lora.init)
    for init in next(iter(leaf.values())) if is_distribution(leaf) else [leaf]:
        if problem := refusal(init, conv1d=facts.conv1d):
            raise ValueError(problem)
