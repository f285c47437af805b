"""The sections of a trial's config that say how it runs: training, evaluation, preference tuning.

As ``study.sections`` (model, adapter, quantization, data), each is a frozen dataclass whose
fields carry their defaults and one-line docstrings, checked in ``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass

from study.sections import nonnegative_float, positive_float, positive_int, require

DTYPES = ("auto", "fp32", "bf16", "fp16")
COMPILES = ("auto", "on", "off")  # train.compile (study.trial.compiling)
BATCHINGS = ("pad", "group", "pack")  # train.batching (study.trial.batches)
DPO_LOSSES = ("sigmoid", "ipo")  # dpo.loss (study.trial.dpo), TRL's names
REFERENCES = ("cached", "disabled")  # dpo.reference (study.trial.reference)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: AdamW, linear warm-up then cosine decay."""

    lr: float = 3e-4
    """Peak learning rate of AdamW."""
    steps: int | None = 150
    """Optimizer steps; set None and give epochs instead."""
    epochs: float | None = None
    """Passes over the training examples instead of a step count."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    warmup: int = 10
    """Warm-up steps of the learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at this fraction of the peak learning rate."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value."""
    dtype: str = "auto"
    """Compute precision: fp32, bf16 (autocast; needs native bf16), fp16 (autocast with loss
    scaling; CUDA only) or auto: the fastest on this machine by a timed matmul of the model's
    shapes (cached; see study.trial.precision)."""
    grad_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    compile: str = "off"
    """torch.compile of the step's decoder layers: on, off or auto: compiled only where timed
    steps of this model show it faster and the planned steps save more than the timed compile
    takes, else eager; the reason in env.json (cached; see study.trial.compiling). Off by
    default: on 2 CPU cores the compiled layers trained the bundled model 3-5% faster, and
    auto's first decision cost its 30-step trial 51.5 s (docs/BENCHMARKS.md)."""
    batching: str = "pad"
    """Micro-batches: pad (to the longest), group (similar lengths) or pack (one row, no pads);
    pad by default, as measured: neither other trained faster (docs/BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        positive_float("train.lr", self.lr)
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of train.steps and train.epochs")
        if self.steps is not None:
            positive_int("train.steps", self.steps)
        if self.epochs is not None:
            positive_float("train.epochs", self.epochs)
        positive_int("train.batch_size", self.batch_size)
        positive_int("train.grad_accum", self.grad_accum)
        require(isinstance(self.warmup, int) and not isinstance(self.warmup, bool)
                and self.warmup >= 0, "train.warmup", self.warmup, "an integer >= 0")
        require(isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1,
                "train.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        nonnegative_float("train.weight_decay", self.weight_decay)
        positive_float("train.grad_clip", self.grad_clip)
        require(self.dtype in DTYPES, "train.dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        require(isinstance(self.grad_checkpointing, bool), "train.grad_checkpointing",
                self.grad_checkpointing, "true or false")
        if isinstance(self.compile, bool):  # YAML 1.1 (spaces, --set) reads on / off as booleans
            object.__setattr__(self, "compile", "on" if self.compile else "off")
        require(self.compile in COMPILES, "train.compile", self.compile,
                f"one of {', '.join(COMPILES)}")
        require(self.batching in BATCHINGS, "train.batching", self.batching,
                f"one of {', '.join(BATCHINGS)}")


@dataclass(frozen=True)
class EvalConfig:
    """When and how quality is measured."""

    every: int = 50
    """Evaluate (and report) every this many optimizer steps, and at the end."""
    max_new_tokens: int = 24
    """Greedy generation length for exact match."""
    num_examples: int = 6
    """Generations saved to examples.json."""
    early_prompts: int = 30
    """Eval prompts generated for exact match at each evaluation before the last: the first ones
    of the eval split, the same every time (0: loss only). The last evaluation generates the
    whole split. study.tune sets 0 unless an objective is exact_match."""
    latency_tokens: int = 32
    """Tokens decoded per prompt when measuring latency."""
    latency_prompts: int = 3
    """Prompts decoded when measuring latency (merged and unmerged)."""

    def __post_init__(self) -> None:
        for name in ("every", "max_new_tokens", "latency_tokens", "latency_prompts"):
            positive_int(f"eval.{name}", getattr(self, name))
        for name in ("num_examples", "early_prompts"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"eval.{name}",
                value,
                "an integer >= 0",
            )


@dataclass(frozen=True)
class DpoConfig:
    """Preference tuning (data.task=preference): DPO's loss against a fixed reference model."""

    loss: str = "sigmoid"
    """sigmoid (DPO: -log sigmoid(beta x margin)) or ipo ((margin - 1 / (2 beta))^2, the log-ratios
    averaged per completion token as TRL does); the margin is the policy's log-ratio of chosen
    over rejected minus the reference's."""
    beta: float = 0.1
    """How far the policy may move from the reference: DPO's inverse temperature, IPO's tau."""
    reference: str = "cached"
    """The reference's log-probabilities: cached (computed once from the starting model before
    training, a trial file that survives --resume) or disabled (the same model with its adapters
    switched off, each step: the base, so only for a new adapter); cached as measured faster
    (docs/BENCHMARKS.md)."""
    sft_weight: float = 0.0
    """Weight of the chosen responses' mean token loss added to DPO's (TRL's loss_type
    [..., "sft"] with loss_weights; RPO's alpha): it keeps the chosen answers likely where pairs
    differ in a token or two and DPO alone pushes both down (docs/BENCHMARKS.md); 0 is plain
    DPO."""

    def __post_init__(self) -> None:
        require(self.loss in DPO_LOSSES, "dpo.loss", self.loss, f"one of {', '.join(DPO_LOSSES)}")
        positive_float("dpo.beta", self.beta)
        nonnegative_float("dpo.sft_weight", self.sft_weight)
        require(self.reference in REFERENCES, "dpo.reference", self.reference,
                f"one of {', '.join(REFERENCES)}")
