"""TrialConfig: everything one trial needs, typed, validated and frozen.

    cfg = TrialConfig.from_dict({"lora.rank": 16, "train": {"lr": 1e-4}})   # dotted or nested
    cfg.to_dict()   # nested plain data; TrialConfig.from_dict(cfg.to_dict()) == cfg

Defaults live here and nowhere else; a dict becomes a config only through ``from_dict``; a bad
value fails at construction with a ValueError that names the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from lora_impl.inject import SHORTHANDS
from lora_impl.layer import INITS

METHODS = ("lora", "full", "base")
TASKS = ("skills", "lm", "sft")
DTYPES = ("auto", "fp32", "bf16")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        name,
        value,
        "a positive integer",
    )


def _positive_float(name: str, value: Any) -> None:
    _require(
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0,
        name,
        value,
        "a number > 0",
    )


@dataclass(frozen=True)
class ModelConfig:
    """Which model to fine-tune."""

    name: str = "smollm2-135m"
    """A registry name (study.models.REGISTRY), a local directory or a Hugging Face id."""

    def __post_init__(self) -> None:
        _require(
            isinstance(self.name, str) and bool(self.name),
            "model.name",
            self.name,
            "a non-empty string",
        )


@dataclass(frozen=True)
class LoraConfig:
    """The adapter: y = W x + (alpha / rank) B A dropout(x)."""

    rank: int = 8
    alpha: float | None = None
    """Scale numerator; if unset it is alpha_ratio x rank."""
    alpha_ratio: float | None = None
    """alpha / rank (default 2.0 when neither alpha nor alpha_ratio is given)."""
    dropout: float = 0.0
    targets: str = "all-linear"
    """A shorthand (qv, qkvo, attention, mlp, all-linear) or comma-separated module names."""
    rslora: bool = False
    init: str = "kaiming"

    def __post_init__(self) -> None:
        _positive_int("lora.rank", self.rank)
        if self.alpha_ratio is not None:
            _positive_float("lora.alpha_ratio", self.alpha_ratio)
        if self.alpha is None:
            object.__setattr__(self, "alpha", float((self.alpha_ratio or 2.0) * self.rank))
        _positive_float("lora.alpha", self.alpha)
        if self.alpha_ratio is not None and not math.isclose(
            self.alpha, self.alpha_ratio * self.rank
        ):
            raise ValueError(
                f"lora.alpha ({self.alpha}) and lora.alpha_ratio ({self.alpha_ratio}) disagree "
                f"for rank {self.rank}: give one of them"
            )
        _require(
            isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1,
            "lora.dropout",
            self.dropout,
            "in [0, 1)",
        )
        _require(
            isinstance(self.targets, str) and bool(self.targets.strip()),
            "lora.targets",
            self.targets,
            f"one of {', '.join(SHORTHANDS)} or comma-separated module names",
        )
        _require(self.init in INITS, "lora.init", self.init, f"one of {', '.join(INITS)}")
        _require(isinstance(self.rslora, bool), "lora.rslora", self.rslora, "true or false")

    @property
    def target_spec(self) -> str | list[str]:
        """What inject_lora takes: the shorthand, or the list of module names."""
        if self.targets in SHORTHANDS:
            return self.targets
        return [t.strip() for t in self.targets.split(",") if t.strip()]


@dataclass(frozen=True)
class QuantConfig:
    """Quantization of the frozen base's linear layers (bitsandbytes)."""

    bits: int = 16
    """16 (none), 8 (LLM.int8) or 4."""
    type: str = "nf4"
    """4-bit data type: nf4 or fp4."""
    double_quant: bool = False

    def __post_init__(self) -> None:
        _require(
            self.bits in (4, 8, 16) and not isinstance(self.bits, bool),
            "quant.bits",
            self.bits,
            "one of 4, 8, 16",
        )
        _require(self.type in ("nf4", "fp4"), "quant.type", self.type, "one of nf4, fp4")
        _require(
            isinstance(self.double_quant, bool),
            "quant.double_quant",
            self.double_quant,
            "true or false",
        )


@dataclass(frozen=True)
class DataConfig:
    """The task and how much of it to use."""

    task: str = "skills"
    """skills (built-in checkable instructions), lm (language modelling) or sft (dialogue)."""
    source: str = "builtin"
    """lm: builtin, wikitext-2 or a .txt/.jsonl/.parquet path; sft: hh-rlhf, alpaca or a .jsonl
    path; skills: builtin."""
    size: int = 400
    """Number of training examples (LM: blocks); subsets are nested across sizes."""
    seq_len: int = 128
    """Tokens per LM block; the maximum length of an SFT/skills example."""
    eval_size: int = 150
    test_size: int = 150

    def __post_init__(self) -> None:
        _require(self.task in TASKS, "data.task", self.task, f"one of {', '.join(TASKS)}")
        _require(
            isinstance(self.source, str) and bool(self.source),
            "data.source",
            self.source,
            "a non-empty string",
        )
        for name in ("size", "seq_len", "eval_size", "test_size"):
            _positive_int(f"data.{name}", getattr(self, name))


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: AdamW, linear warm-up then cosine decay."""

    lr: float = 3e-4
    steps: int | None = 150
    """Optimizer steps; set None and give epochs instead."""
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup: int = 10
    """Warm-up steps of the learning rate."""
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    dtype: str = "auto"
    """fp32, bf16 (autocast) or auto: bf16 on CUDA and on CPUs with native bf16, else fp32."""
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        _positive_float("train.lr", self.lr)
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of train.steps and train.epochs")
        if self.steps is not None:
            _positive_int("train.steps", self.steps)
        if self.epochs is not None:
            _positive_float("train.epochs", self.epochs)
        _positive_int("train.batch_size", self.batch_size)
        _positive_int("train.grad_accum", self.grad_accum)
        _require(
            isinstance(self.warmup, int) and not isinstance(self.warmup, bool) and self.warmup >= 0,
            "train.warmup",
            self.warmup,
            "an integer >= 0",
        )
        _require(
            isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1,
            "train.min_lr_ratio",
            self.min_lr_ratio,
            "in [0, 1]",
        )
        _require(
            isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
            "train.weight_decay",
            self.weight_decay,
            "a number >= 0",
        )
        _positive_float("train.grad_clip", self.grad_clip)
        _require(self.dtype in DTYPES, "train.dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        _require(
            isinstance(self.grad_checkpointing, bool),
            "train.grad_checkpointing",
            self.grad_checkpointing,
            "true or false",
        )


@dataclass(frozen=True)
class EvalConfig:
    """When and how quality is measured."""

    every: int = 50
    """Evaluate (and report) every this many optimizer steps, and at the end."""
    max_new_tokens: int = 24
    """Greedy generation length for exact match."""
    num_examples: int = 6
    """Generations saved to examples.json."""
    latency_tokens: int = 32
    latency_prompts: int = 3

    def __post_init__(self) -> None:
        for name in ("every", "max_new_tokens", "latency_tokens", "latency_prompts"):
            _positive_int(f"eval.{name}", getattr(self, name))
        _require(
            isinstance(self.num_examples, int) and self.num_examples >= 0,
            "eval.num_examples",
            self.num_examples,
            "an integer >= 0",
        )


_SECTIONS = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "quant": QuantConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


@dataclass(frozen=True)
class TrialConfig:
    """One trial: model, method, adapter, quantization, data, training, evaluation, seed."""

    method: str = "lora"
    """lora, full (all parameters train) or base (evaluate the untouched model)."""
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _require(self.method in METHODS, "method", self.method, f"one of {', '.join(METHODS)}")
        _require(
            isinstance(self.seed, int) and not isinstance(self.seed, bool),
            "seed",
            self.seed,
            "an integer",
        )
        if self.method == "full" and self.quant.bits < 16:
            raise ValueError(
                f"method=full needs quant.bits=16: quantized weights cannot be trained "
                f"(got quant.bits={self.quant.bits}); use method=lora for QLoRA"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        """Build from nested ({"lora": {"rank": 8}}) and/or dotted ({"lora.rank": 8}) keys."""
        nested: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise ValueError(f"config keys must be strings, got {key!r}")
            section, _, leaf = key.partition(".")
            if leaf:
                nested.setdefault(section, {})
                if not isinstance(nested[section], dict):
                    raise ValueError(f"{section} must be a mapping")
                nested[section][leaf] = value
            elif isinstance(value, dict):
                nested.setdefault(key, {}).update(value)
            else:
                nested[key] = value
        top = {f.name for f in fields(cls)}
        for key in nested:
            if key not in top:
                raise ValueError(f"unknown config key {key!r}; allowed: {', '.join(sorted(top))}")
        kwargs: dict[str, Any] = {}
        for key, value in nested.items():
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ValueError(f"{key} must be a mapping of {key}.* fields")
                kwargs[key] = _build(_SECTIONS[key], key, value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (JSON/YAML-ready)."""
        return dataclasses.asdict(self)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys ({'lora': {'rank': 8}} -> {'lora.rank': 8})."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _build(cls: type, section: str, values: dict[str, Any]):
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in fields(cls)}
    kwargs = {}
    if cls is TrainConfig and values.get("epochs") is not None and "steps" not in values:
        kwargs["steps"] = None  # epochs given alone replace the default step count
    for key, value in values.items():
        if key not in allowed:
            raise ValueError(
                f"unknown config key {section}.{key!s}; allowed: "
                + ", ".join(f"{section}.{a}" for a in sorted(allowed))
            )
        kwargs[key] = _coerce(hints[key], value)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    """Accept an int where a float is declared (YAML writes 1e-4 as a float but 2 as an int)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if float in args and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
