"""The time model: how long a configuration's trial takes, before it runs.

    speed = machine_speed(cfg, facts)          # FLOP/s of a model-shaped matmul, measured
    trial_time(cfg, facts, speed)              # TrialTime(load_s, train_s, eval_s, other_s)

A trial's time is a sum of terms whose sizes are counted from the configuration and its data
(``study.cost.workload``: the real padded batches), each times a coefficient measured once on this
repository's runs (``bench/time_model.py --fit``, docs/BENCHMARKS.md):

- compute: the FLOPs of every forward and backward (linear layers, attention, the output head
  at target positions only, the adapter; backward computes input gradients, and weight
  gradients only for full fine-tuning; checkpointing repeats the forward), divided by the
  FLOP/s of one matmul of the model's shapes at the trial's precision, timed on this machine
  (the figure ``train.dtype=auto`` is chosen by, ``study.trial.precision``): a faster machine is
  faster in the estimate without re-fitting;
- elementwise: the activations the layers produce (norms, activation functions, residual adds,
  autocast's casts), per element, which bf16 does not speed up as it does the matmul: on a
  2-core AMD EPYC a bf16 matmul ran 4.5x faster than fp32 and bf16 training 1.85x;
- dequantization: a 4/8-bit base dequantizes each linear weight at every forward and backward
  (bitsandbytes on CPU), per weight;
- calls: the per-layer cost of each forward or backward call (Python, kernel launches), which
  dominates batch-1 decoding and small models;
- the optimizer's update, per trainable parameter and step; checkpoints, per byte written;
- loading: fixed, per parameter read, per weight quantized;
- compiling (``train.compile on``): per trial, measured rather than fitted.

The estimate assumes a trial runs to its last step (ASHA may stop it earlier) and that a
trained model's answers are as long as the references (the base model's: the full
``eval.max_new_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lora_impl.inits import from_weight
from study.config import TrialConfig
from study.cost.estimate import adapter_params, compute_precision
from study.cost.workload import Batches, Generation, workload
from study.trial import precision
from study.trial.evaluate import GENERATE_BATCH
from study.trial.resources import WARMUP_TOKENS

# Coefficients, fitted by ``python -m bench.time_model --fit`` (seconds per unit of each term) on
# 13 trials of the bundled model on a 2-core AMD EPYC with avx512_bf16 (docs/BENCHMARKS.md,
# "Memory and time over whole studies on a bf16 machine"): a thesis-news study and a demo's
# trials in bf16 (skills and classify, 5 to 443 steps, 16/8/4-bit, full) and a classify trial in
# fp32; in-sample median error 7%, largest 18%. On another machine the compute terms follow its
# measured matmul rate; the others (elementwise work, casts, dequantization, per-call costs,
# loading) are this machine's.
COEFFICIENTS = {
    "train.compute": 2.153,  # per second of model-shaped matmul at the measured rate
    "train.elementwise": 0.0,  # per 1e9 activation elements (forward + backward)
    "train.dequant": 2.42,  # per 1e9 quantized weights dequantized
    "train.calls": 0.0,  # per layer of a forward + backward call (fitted at 0 here)
    "train.casts": 3.115,  # per 1e9 float weights cast to 16 bits under CPU autocast
    "train.optimizer": 1.184,  # per 1e9 trainable parameters updated
    "eval.compute": 0.3975,
    "eval.elementwise": 0.338,
    "eval.dequant": 1.947,
    "eval.calls": 0.005945,  # per layer of a forward call
    "load.const": 0.5066,
    "load.params": 0.06815,  # per 1e9 parameters loaded
    "load.quantized": 15.86,  # per 1e9 weights quantized at load
    "other.const": 0.08428,  # per evaluation: metrics, trial files
    "other.checkpoint": 0.0,  # per GB written
    # per trial compiled (train.compile on): its decoder layers compiled with inductor's cache
    # warm, as every trial of a study but the first finds it; the bundled model on 2 AMD EPYC
    # cores, bench/compile_choice.py (a cold first compile took 64.6 s; docs/BENCHMARKS.md)
    "other.compile": 17.0,
}
WORKER_START_S = 3.0  # before run_trial: process start, imports (bench/study_overhead.py)
# A trial forked from the study's fork server (study.forkserver) has torch, transformers and
# bitsandbytes imported already. Measured in the demo and a smoke study of 2026-12-04
# (docs/BENCHMARKS.md): 2.0 s between trials; load_s 0.4-0.6 s for the bundled and the tiny
# model alike (the weights' pages are cached: no per-parameter term), 2.4 s at 4 bits and 1.4 s
# at 8 bits for the bundled model (quantizing 0.107e9 weights: 18 and 9 s per 1e9, against 24
# fitted in fresh processes, bitsandbytes' import included).
FORKED_WORKER_START_S = 2.0
FORKED = {"load.const": 0.45, "load.params": 0.0, "load.quantized.4": 18.0,
          "load.quantized.8": 9.0}

# the share of a trained model's prompts that are generated (the rest are read off the loss
# pass): about 1 - exact match; the demo's finished trials (bench/time_model.py)
GENERATED_SHARE = 0.4
STUDY_START_S = 15.0  # before the first trial: checks, model facts, data, Ray start
_BASE = TrialConfig(method="base")  # evaluation: no adapter FLOPs counted


@dataclass(frozen=True)
class TrialTime:
    """Estimated seconds of one trial, by phase."""

    load_s: float
    train_s: float
    eval_s: float
    other_s: float

    @property
    def total_s(self) -> float:
        return self.load_s + self.train_s + self.eval_s + self.other_s


def machine_speed(cfg: TrialConfig, facts) -> float:
    """FLOP/s of the model-shaped matmul at ``cfg``'s precision on this machine (cached with the
    precision choice, re-timed once per process: ``precision.checked_timings``)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = precision.matmul_shape(facts.hf_config, cfg.train.batch_size * cfg.data.seq_len)
    timings = precision.checked_timings(device, shape)
    name = cfg.train.dtype
    if name == "auto":  # what precision.resolve chooses from these timings
        name = precision.choose(timings, precision.preferred(device))
    m, k, n = shape
    return 2.0 * m * k * n / (timings.get(name, timings["fp32"]) / 1e3)


def _flops(facts, batches: Batches, cfg: TrialConfig) -> tuple[float, float, float]:
    """Forward FLOPs of ``batches``: (linear layers and adapter, attention, output head)."""
    linear = 2.0 * (facts.linear_params + adapter_params(cfg, facts)) * batches.tokens
    attention = 4.0 * facts.layers * facts.hidden * batches.squares
    head = 2.0 * facts.vocab * facts.hidden * batches.targets
    return linear, attention, head


def _elements(facts, tokens: float) -> float:
    """Activation elements (1e9) the linear layers output over ``tokens`` (about the sum of
    their output widths per token: their weights over the hidden size)."""
    return tokens * facts.linear_params / facts.hidden / 1e9


def _generation(facts, gen: Generation, share: float, new_tokens: int,
                ) -> tuple[float, int, int]:
    """(FLOPs, forward calls, tokens computed) of answering ``share`` of ``gen``'s prompts in
    batches of ``GENERATE_BATCH``, each batch decoding ``new_tokens`` (a wrong answer seldom
    stops early: the base model's never do on the skills task)."""
    n = math.ceil(len(gen.prompt_lengths) * share)
    flops, calls, tokens = 0.0, 0, 0
    per_token = 2.0 * (facts.linear_params + facts.vocab * facts.hidden)
    for i in range(0, n, GENERATE_BATCH):
        chunk = gen.prompt_lengths[i : min(n, i + GENERATE_BATCH)]
        rows, width = len(chunk), max(chunk)
        flops += rows * (width * 2.0 * facts.linear_params + 4.0 * facts.layers * facts.hidden
                         * width**2 + 2.0 * facts.vocab * facts.hidden)  # prefill
        context = sum(width + j for j in range(1, new_tokens))
        flops += rows * ((new_tokens - 1) * per_token + 4.0 * facts.layers * facts.hidden * context)
        calls += new_tokens
        tokens += rows * (width + new_tokens - 1)
    return flops, calls, tokens


def _variant_terms(out: dict, cfg: TrialConfig, facts, forwards: float, speed: float) -> None:
    """What a LoRA variant adds, in the terms' own units (their coefficients were fitted on
    plain LoRA: bench/time_model.py). DoRA, every forward of every adapted layer: the product
    B A and the norm of W + s B A over the whole weight (elementwise), and a quantized weight
    dequantized once more. PiSSA / OLoRA, once at load: an SVD or a QR of each adapted weight,
    counted as about 4 x out x in x min(out, in) flops (LAPACK's dense SVD is a few times that
    of a matrix product of the same shapes)."""
    dims = facts.target_dims[cfg.lora.targets]
    weights = sum(i * o for i, o in dims)
    if cfg.lora.variant == "dora":
        out["train.compute"] += 2.0 * cfg.lora.rank * weights * forwards / speed
        out["train.elementwise"] += 3.0 * weights * forwards
        if cfg.quant.bits != 16:
            out["train.dequant"] += weights * forwards / 1e9
    if from_weight(cfg.lora.init):
        out["train.compute"] += sum(4.0 * i * o * min(i, o) for i, o in dims) / speed


def _train_terms(out: dict, cfg: TrialConfig, facts, speed: float, work) -> None:
    """The training phase's terms and what it writes (``terms``, a method that trains)."""
    full = cfg.method == "full"
    # train.compile auto compiles only where a measured verdict says it repays (cached per
    # machine and workload): counted as not compiled
    out["other.compile"] = float(cfg.train.compile == "on")
    forwards = 2.0 if cfg.train.grad_checkpointing else 1.0
    # backward: input gradients (about one forward's work; attention's twice), and weight
    # gradients (another) for full fine-tuning; checkpointing runs the forward again
    linear, attention, head = _flops(facts, work.train, cfg)
    flops = ((forwards + 1.0 + full) * (linear + head) + (forwards + 2.0) * attention)
    out["train.compute"] = flops / speed
    out["train.elementwise"] = _elements(facts, work.train.tokens) * (forwards + 1.0)
    out["train.dequant"] = out["load.quantized"] * work.train.count * (forwards + 1.0)
    out["train.calls"] = facts.layers * work.train.count
    # under autocast on CPU every float weight a linear layer holds is cast to 16 bits in each
    # forward (quantized ones are dequantized instead: train.dequant); on CUDA they are stored
    # at 16 bits already
    if compute_precision(cfg, facts) is not None and not torch.cuda.is_available():
        floats = facts.linear_params if cfg.quant.bits == 16 else 0
        out["train.casts"] = floats * work.train.count * forwards / 1e9
    if cfg.method == "lora":
        _variant_terms(out, cfg, facts, work.train.count * forwards, speed)
    trainable = facts.total_params if full else adapter_params(cfg, facts)
    out["train.optimizer"] = trainable * work.steps / 1e9
    written = trainable * 12.0 + (facts.total_params * 4.0 if full else 0.0)
    out["other.checkpoint"] = written * work.evaluations / 1e9


def terms(cfg: TrialConfig, facts, speed: float, generated: float | None = None,
          ) -> dict[str, float]:
    """Each term's size for ``cfg`` (the units of ``COEFFICIENTS``); ``generated``: the share
    of a trained model's prompts it generates (default ``GENERATED_SHARE``; a fit knows it)."""
    work = workload(cfg, facts.tokenizer)
    quantized = facts.linear_params if cfg.quant.bits != 16 else 0
    out = dict.fromkeys(COEFFICIENTS, 0.0)
    out["load.const"] = 1.0
    out["load.params"] = facts.total_params / 1e9
    out["load.quantized"] = quantized / 1e9
    out["other.const"] = work.evaluations
    if cfg.method != "base":
        _train_terms(out, cfg, facts, speed, work)
    # evaluation: the loss on the eval split each time, answers (a subset before the last),
    # at the end the test split and the latency runs (2 x prompts x tokens batch-1 decodes).
    # Only answers the loss pass does not give are generated: all of the base model's, a
    # share of a trained model's (study.trial.evaluate.loss_and_answers)
    # with DPO's reference outside evaluation (forwards without gradients, as evaluation's)
    loss = work.eval_loss.scaled(work.evaluations) + work.reference
    flops = sum(_flops(facts, loss, _BASE)) + sum(_flops(facts, work.test_loss, _BASE))
    calls = loss.count + work.test_loss.count
    tokens = loss.tokens + work.test_loss.tokens
    share = 1.0 if cfg.method == "base" else (
        GENERATED_SHARE if generated is None else generated)
    for gen, times in ((work.early_generation, work.evaluations - 1),
                       (work.eval_generation, 1), (work.test_generation, 1)):
        gen_flops, gen_calls, gen_tokens = _generation(facts, gen, share, cfg.eval.max_new_tokens)
        flops, calls = flops + times * gen_flops, calls + times * gen_calls
        tokens += times * gen_tokens
    # latency: batch-1 decodes of each prompt after a short warm-up (classify: one forward of
    # each text after one), unmerged and (LoRA) merged
    runs = 2 if cfg.method == "lora" else 1
    prompts = work.latency or (0,)
    if cfg.data.task == "classify":
        calls += runs * (len(work.latency) + 1)
        tokens += runs * (sum(prompts) + prompts[0])
    else:
        warmup = min(WARMUP_TOKENS, cfg.eval.latency_tokens)
        calls += runs * (cfg.eval.latency_prompts * (cfg.eval.latency_tokens + 1) + warmup + 1)
        tokens += runs * (len(prompts) + 1) * (max(prompts) + cfg.eval.latency_tokens)
    out["eval.compute"] = flops / speed
    out["eval.elementwise"] = _elements(facts, tokens)
    out["eval.calls"] = facts.layers * calls
    out["eval.dequant"] = quantized * calls / 1e9
    return out


def trial_time(cfg: TrialConfig, facts, speed: float | None = None, forked: bool = False
               ) -> TrialTime:
    """Estimated seconds of a trial of ``cfg`` run to its end (see the module docstring);
    ``forked``: the trial is forked from the study's fork server (its imports done)."""
    sizes = terms(cfg, facts, speed or machine_speed(cfg, facts))
    coefficients = dict(COEFFICIENTS)
    if forked:
        coefficients["load.const"] = FORKED["load.const"]
        coefficients["load.params"] = FORKED["load.params"]
        coefficients["load.quantized"] = FORKED.get(f"load.quantized.{cfg.quant.bits}", 0.0)
    phase = {"load": 0.0, "train": 0.0, "eval": 0.0, "other": 0.0}
    for key, size in sizes.items():
        phase[key.split(".")[0]] += coefficients[key] * size
    return TrialTime(phase["load"], phase["train"], phase["eval"], phase["other"])


# what a trial's time depends on (the rest of a configuration does not change it)
TIME_KEYS = ("model.name", "method", "lora.rank", "lora.targets", "quant.bits", "quant.scheme",
             "data.size", "data.seq_len", "train.batch_size", "train.grad_accum", "train.steps",
             "train.epochs", "train.grad_checkpointing", "train.dtype", "train.compile",
             "train.batching", "eval.every", "eval.max_new_tokens")
LONGER = ("train.steps", "train.epochs", "data.size", "data.seq_len", "eval.max_new_tokens")


@dataclass(frozen=True)
class StudyTime:
    """The plan's estimate: seconds of a study whose trials all run to their end."""

    trials: int
    mean_trial_s: float  # over the space's configurations (what TPE draws is not known yet)
    shortest_s: float
    longest_s: float
    baselines_s: float
    total_s: float  # the expected total; every trial the longest: ``worst_s``
    worst_s: float

    def describe(self) -> str:
        return (f"estimated wall time {_minutes(self.total_s)} with every trial run to its end "
                f"({self.trials} trials of {_minutes(self.shortest_s)} to "
                f"{_minutes(self.longest_s)}, {_minutes(self.mean_trial_s)} on average over the "
                f"space, + {_minutes(self.baselines_s)} of baselines; at most "
                f"{_minutes(self.worst_s)} if every trial drew the slowest configuration)")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def study_time(space: dict, facts, num_samples: int, baselines: list[dict],
               concurrency: int = 1, forked: bool = False) -> StudyTime | None:
    """The wall time of a study of ``num_samples`` trials of ``space`` plus ``baselines``, each
    trial run to its last step; None when no configuration of the space can be estimated.
    ``facts``: each model's (``study.cost.estimate.Facts``); ``forked``: trials are forked from the
    study's fork server."""
    from search_spaces import choice_points

    start = FORKED_WORKER_START_S if forked else WORKER_START_S
    times = []
    for point in choice_points(space, TIME_KEYS, high=LONGER):
        try:
            cfg = TrialConfig.from_dict(point)
        except ValueError:
            continue  # a combination the search never launches
        times.append(trial_time(cfg, facts[cfg.model.name], forked=forked).total_s + start)
    if not times:
        return None
    configs = [TrialConfig.from_dict(b) for b in baselines]
    base = sum(trial_time(c, facts[c.model.name], forked=forked).total_s + start for c in configs)
    mean = sum(times) / len(times)
    width = max(1, concurrency)
    return StudyTime(
        trials=num_samples,
        mean_trial_s=mean,
        shortest_s=min(times),
        longest_s=max(times),
        baselines_s=base,
        total_s=STUDY_START_S + (base + num_samples * mean) / width,
        worst_s=STUDY_START_S + (base + num_samples * max(times)) / width,
    )


def trial_estimator(facts, forked: bool = False):
    """A function config dict -> estimated seconds of its trial run to its end (the summary);
    ``facts``: each model's."""
    def estimate(config: dict) -> float:
        cfg = TrialConfig.from_dict(config)
        return trial_time(cfg, facts[cfg.model.name], forked=forked).total_s

    return estimate
