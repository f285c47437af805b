"""The sections of a trial's config: model, adapter, quantization, data, training, evaluation.

Each is a frozen dataclass whose fields carry their defaults and a one-line docstring (the help
of the field's flag); ``__post_init__`` refuses a bad value with a ValueError that names the
field and what is allowed. ``study.config.TrialConfig`` puts them together; a new field goes
into its section here and reaches the CLI, search spaces and the trial with nothing else edited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lora_impl.inject import SHORTHANDS
from lora_impl.layer import LoraSpec

METHODS = ("lora", "full", "base")
TASKS = ("skills", "lm", "sft", "classify", "preference")


def require(ok: bool, name: str, value: Any, allowed: str) -> None:
    """ValueError ``{name} must be {allowed}, got {value!r}`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def positive_int(name: str, value: Any) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        name,
        value,
        "a positive integer",
    )


def positive_float(name: str, value: Any) -> None:
    require(
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0,
        name,
        value,
        "a number > 0",
    )


def nonnegative_float(name: str, value: Any) -> None:
    require(
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0,
        name,
        value,
        "a number >= 0",
    )


@dataclass(frozen=True)
class ModelConfig:
    """Which model to fine-tune."""

    name: str = "smollm2-135m"
    """A registry name (study.trial.models.REGISTRY), a local directory or a Hugging Face id."""

    def __post_init__(self) -> None:
        require(
            isinstance(self.name, str) and bool(self.name),
            "model.name",
            self.name,
            "a non-empty string",
        )


@dataclass(frozen=True)
class LoraConfig:
    """The adapter: y = W x + (alpha / rank) B A dropout(x)."""

    rank: int = 8
    """Adapter rank r: A is (r, in), B is (out, r)."""
    alpha: float | None = None
    """Scale numerator; if unset it is alpha_ratio x rank."""
    alpha_ratio: float | None = None
    """alpha / rank (default 2.0 when neither alpha nor alpha_ratio is given)."""
    dropout: float = 0.0
    """Dropout on the adapter's input, in [0, 1)."""
    targets: str = "all-linear"
    """A shorthand (qv, qkv, qkvo, attention, mlp, all-linear) or comma-separated module names
    (GPT-2, GPT-NeoX, Phi-3 fuse q, k and v: there qv and qkv are the one fused projection)."""
    rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r."""
    init: str = "kaiming"
    """Initialisation: kaiming (PEFT's default) or gaussian (A random, B zero); pissa,
    pissa_niter_K or olora (A and B from the base weight, which keeps the residual)."""
    variant: str = "lora"
    """The adapter layer: lora, dora (a learned magnitude per output, PEFT's use_dora) or
    module:Class, your own LoRALinear subclass (docs/VARIANTS.md)."""
    loraplus_ratio: float = 1.0
    """LoRA+: B's learning rate is lr x this (1 = plain LoRA; the paper suggests 16)."""
    init_from: str | None = None
    """A PEFT-format adapter directory (ours or PEFT's) whose weights start the adapter, e.g. an
    SFT trial's adapter/ before DPO; its rank, alpha and targets must be the trial's."""

    def __post_init__(self) -> None:
        positive_int("lora.rank", self.rank)  # before alpha = ratio x rank is computed
        if self.alpha_ratio is not None:
            positive_float("lora.alpha_ratio", self.alpha_ratio)
        if self.alpha is None:
            object.__setattr__(self, "alpha", float((self.alpha_ratio or 2.0) * self.rank))
        self.spec()  # the adapter's own checks: rank, alpha, dropout, rslora, init, variant
        positive_float("lora.loraplus_ratio", self.loraplus_ratio)
        from lora_impl.variants import layer_class

        layer_class(self.variant)  # a user's module: imported now, so a bad name stops the study
        if self.alpha_ratio is not None and not math.isclose(
            self.alpha, self.alpha_ratio * self.rank
        ):
            raise ValueError(
                f"lora.alpha ({self.alpha}) and lora.alpha_ratio ({self.alpha_ratio}) disagree "
                f"for rank {self.rank}: give one of them"
            )
        require(self.init_from is None or (isinstance(self.init_from, str)
                                           and bool(self.init_from)),
                "lora.init_from", self.init_from, "an adapter directory")
        require(
            isinstance(self.targets, str) and bool(self.targets.strip()),
            "lora.targets",
            self.targets,
            f"one of {', '.join(SHORTHANDS)} or comma-separated module names",
        )

    def spec(self) -> LoraSpec:
        """The adapter as lora_impl takes it (``inject_lora(model, targets, spec)``)."""
        return LoraSpec(
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            rslora=self.rslora,
            init=self.init,
            variant=self.variant,
        )

    @property
    def target_spec(self) -> str | list[str]:
        """What inject_lora takes: the shorthand, or the list of module names."""
        if self.targets in SHORTHANDS:
            return self.targets
        return [t.strip() for t in self.targets.split(",") if t.strip()]


SCHEMES = {"16": (16, None), "8": (8, None), "nf4": (4, "nf4"), "fp4": (4, "fp4")}


@dataclass(frozen=True)
class QuantConfig:
    """Quantization of the frozen base's linear layers (bitsandbytes)."""

    scheme: str | None = None
    """A shorthand for bits and type: 16, 8, nf4 or fp4, resolved into quant.bits and
    quant.type (a study comparing 16-bit with nf4 and fp4 searches this one factor, so no two
    trials differ only in a type that 16 bits ignores)."""
    bits: int = 16
    """16 (none), 8 (LLM.int8) or 4."""
    type: str = "nf4"
    """4-bit data type: nf4 or fp4."""
    double_quant: bool = False
    """4-bit only: quantize the block scales too (QLoRA's double quantization)."""
    int8_threshold: float = 6.0
    """8-bit only: LLM.int8's outlier threshold: input features with a magnitude above it are
    multiplied in 16-bit, the rest in int8 (6.0 as in the paper and transformers; 0: all int8)."""

    def __post_init__(self) -> None:
        require(
            self.bits in (4, 8, 16) and not isinstance(self.bits, bool),
            "quant.bits",
            self.bits,
            "one of 4, 8, 16",
        )
        require(self.type in ("nf4", "fp4"), "quant.type", self.type, "one of nf4, fp4")
        if self.scheme is not None:
            scheme = str(self.scheme) if not isinstance(self.scheme, bool) else ""
            require(scheme in SCHEMES, "quant.scheme", self.scheme, "one of 16, 8, nf4, fp4")
            bits, kind = SCHEMES[scheme]
            # bits=16 and type=nf4 are the defaults: a scheme overrides them; another value
            # given next to a scheme must agree with it (as lora.alpha with lora.alpha_ratio)
            if self.bits not in (16, bits) or (kind and self.type not in ("nf4", kind)):
                raise ValueError(
                    f"quant.scheme {scheme} and quant.bits={self.bits}, quant.type={self.type} "
                    "disagree: give the scheme alone"
                )
            object.__setattr__(self, "bits", bits)
            object.__setattr__(self, "type", kind or "nf4")
        if self.bits != 4:  # the type means nothing here: one value, so equal bases compare equal
            object.__setattr__(self, "type", "nf4")
        # a shorthand, resolved: the config holds bits and type (what a trial's config.json
        # records), so a recorded config with a changed quant.bits is not a contradiction
        object.__setattr__(self, "scheme", None)
        require(
            isinstance(self.double_quant, bool),
            "quant.double_quant",
            self.double_quant,
            "true or false",
        )
        require(
            isinstance(self.int8_threshold, (int, float))
            and not isinstance(self.int8_threshold, bool)
            and math.isfinite(self.int8_threshold)
            and self.int8_threshold >= 0,
            "quant.int8_threshold",
            self.int8_threshold,
            "a number >= 0",
        )

    @property
    def name(self) -> str:
        """The scheme this is: 16, 8, nf4 or fp4 (the one factor to compare bases by)."""
        return self.type if self.bits == 4 else str(self.bits)


@dataclass(frozen=True)
class DataConfig:
    """The task and how much of it to use."""

    task: str = "skills"
    """skills (built-in checkable instructions), lm (language modelling), sft (dialogue),
    classify (text -> label with a linear score head on the last token) or preference (a prompt
    with a chosen and a rejected response, for DPO: the dpo.* fields)."""
    source: str = "builtin"
    """lm: builtin, wikitext-2 or a .txt/.jsonl/.parquet path; sft: hh-rlhf, alpaca or a .jsonl
    path; skills: builtin; classify: builtin (stdlib docstrings by area), ag_news or a
    .csv/.jsonl/.parquet path with a text and a label column; preference: builtin (the skills
    with a plausible wrong answer rejected), hh-rlhf or a .csv/.jsonl/.parquet path."""
    size: int = 400
    """Number of training examples (LM: blocks); subsets are nested (and, for classify,
    stratified) across sizes."""
    seq_len: int = 128
    """Tokens per LM block; the maximum length of an SFT/skills example; classify: texts are
    truncated to it."""
    text_column: str = "text"
    """classify: the column (field) holding the text."""
    label_column: str = "label"
    """classify: the column holding the label (strings or integers; ids in sorted order)."""
    prompt_column: str = "prompt"
    """preference: the column holding the prompt."""
    chosen_column: str = "chosen"
    """preference: the column holding the preferred response."""
    rejected_column: str = "rejected"
    """preference: the column holding the dispreferred response."""
    eval_size: int = 150
    """Examples in the eval split (selection and early stopping)."""
    test_size: int = 150
    """Examples in the held-out test split (reported, never used for selection)."""

    def __post_init__(self) -> None:
        require(self.task in TASKS, "data.task", self.task, f"one of {', '.join(TASKS)}")
        require(
            isinstance(self.source, str) and bool(self.source),
            "data.source",
            self.source,
            "a non-empty string",
        )
        for name in ("size", "seq_len", "eval_size", "test_size"):
            positive_int(f"data.{name}", getattr(self, name))
        for name in ("text_column", "label_column", "prompt_column", "chosen_column",
                     "rejected_column"):
            value = getattr(self, name)
            require(isinstance(value, str) and bool(value), f"data.{name}", value,
                    "a non-empty column name")
