"""TrialConfig: everything one trial needs, typed, validated and frozen.

    cfg = TrialConfig.from_dict({"lora.rank": 16, "train": {"lr": 1e-4}})   # dotted or nested
    cfg.to_dict()   # nested plain data; TrialConfig.from_dict(cfg.to_dict()) == cfg

Defaults live in the sections (``study.sections``) and nowhere else; a dict becomes a config
only through ``from_dict``; a bad value fails at construction with a ValueError that names the
field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from study.sections import (
    METHODS,
    DataConfig,
    LoraConfig,
    ModelConfig,
    QuantConfig,
    require,
)
from study.sections_run import DpoConfig, EvalConfig, TrainConfig

__all__ = [
    "DataConfig",
    "DpoConfig",
    "EvalConfig",
    "LoraConfig",
    "ModelConfig",
    "QuantConfig",
    "TrainConfig",
    "TrialConfig",
    "flatten",
]

@dataclass(frozen=True)
class TrialConfig:
    """One trial: model, method, adapter, quantization, data, training, evaluation, seed."""

    method: str = "lora"
    """lora, full (all parameters train) or base (evaluate the untouched model)."""
    seed: int = 0
    """Seeds the adapter initialisation, the data order and dropout (never the data split)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)

    def __post_init__(self) -> None:
        require(self.method in METHODS, "method", self.method, f"one of {', '.join(METHODS)}")
        require(
            isinstance(self.seed, int) and not isinstance(self.seed, bool),
            "seed",
            self.seed,
            "an integer",
        )
        if self.method == "lora" and self.quant.bits < 16:  # PiSSA on a 4/8-bit base
            from lora_impl.inits import refusal

            if problem := refusal(self.lora.init, f"{self.quant.bits}bit"):
                raise ValueError(problem)
        if self.data.task == "classify" and self.train.batching == "pack":
            # known from the config alone: refused where a study plans, before any trial runs
            raise ValueError("train.batching=pack is not supported for data.task=classify (the "
                             "score head reads each row's last token): use pad or group")
        if self.data.task == "preference":
            self._check_preference()
        if self.lora.init_from is not None and self.method == "full":
            raise ValueError("lora.init_from starts an adapter: use method=lora (or base, to "
                             "evaluate the adapter untrained)")
        if self.method == "full" and self.quant.bits < 16:
            raise ValueError(
                f"method=full needs quant.bits=16: quantized weights cannot be trained "
                f"(got quant.bits={self.quant.bits}); use method=lora for QLoRA"
            )

    def _check_preference(self) -> None:
        """What the preference task cannot run with, known from the config alone."""
        if self.train.batching == "pack":
            raise ValueError("train.batching=pack is not supported for data.task=preference (a "
                             "pair's two responses are rows of their own): use pad or group")
        if self.train.compile != "off":
            raise ValueError(f"train.compile={self.train.compile} is not supported for "
                             "data.task=preference (its loss runs eager): use off")
        if self.dpo.reference == "disabled" and (self.method != "lora" or self.lora.init_from):
            raise ValueError("dpo.reference=disabled needs method=lora with a new adapter (with "
                             "lora.init_from or method=full, switching adapters off gives the base "
                             "model, not the starting one): use dpo.reference=cached")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        """Build from dotted ({"lora.rank": 8}) and/or nested ({"lora": {"rank": 8}}) keys.

        The one place a mapping becomes a config: a search space's sample, ``--set``, a YAML
        file and ``study.train_one``'s flags all arrive here as the same flat dotted mapping.
        """
        return _build(cls, "", _nest(data))

    def to_flat(self) -> dict[str, Any]:
        """Dotted keys -> values: the form every producer of a config uses."""
        return flatten(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (JSON/YAML-ready)."""
        return dataclasses.asdict(self)

    def config_id(self) -> str:
        """A stable hash of the resolved config without its seed (12 hex digits): a
        configuration's replicates, which differ only in their seeds, share it."""
        data = self.to_dict()
        del data["seed"]
        # fields added since ids were first recorded leave an older configuration's id as it
        # was (a study resumed across an upgrade matches its trials): dropped where unused
        if data["data"]["task"] != "preference":
            del data["dpo"]
            for name in ("prompt_column", "chosen_column", "rejected_column"):
                del data["data"][name]
        if data["lora"]["init_from"] is None:
            del data["lora"]["init_from"]
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys ({'lora': {'rank': 8}} -> {'lora.rank': 8})."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(data: dict[str, Any]) -> dict[str, Any]:
    """Dotted and nested keys -> one new nested mapping."""
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a mapping of fields, got {data!r}")
    nested: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"config keys must be strings, got {key!r}")
        head, _, rest = key.partition(".")
        if rest:
            section = nested.get(head, {})
            if not isinstance(section, dict):
                raise ValueError(f"{head} must be a mapping")
            nested[head] = {**section, **_nest({rest: value})}
        elif isinstance(value, dict):  # copied: the caller's mapping is never changed
            earlier = nested.get(key)
            nested[key] = {**earlier, **value} if isinstance(earlier, dict) else dict(value)
        else:
            nested[key] = value
    return nested


@functools.cache  # a class's fields do not change; from_dict runs for every trial and table row
def field_types(cls: type) -> dict[str, Any]:
    """Each field's type, resolved; a sub-config class made inside a function resolves too."""
    factories = [f.default_factory for f in fields(cls)]
    made = [make() for make in factories if make is not dataclasses.MISSING]
    local = {type(obj).__name__: type(obj) for obj in made}  # names the annotations may use
    return typing.get_type_hints(cls, localns=local)


def is_section(hint: Any) -> bool:
    """Whether a field's type is a sub-config (a dataclass such as LoraConfig)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _build(cls: type, prefix: str, values: dict[str, Any]):
    hints = field_types(cls)
    allowed = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    if issubclass(cls, TrainConfig) and values.get("epochs") is not None and "steps" not in values:
        kwargs["steps"] = None  # epochs given alone replace the default step count
    for key, value in values.items():
        if key not in allowed:
            if not prefix:
                raise ValueError(
                    f"unknown config key {key!r}; allowed: {', '.join(sorted(allowed))}"
                )
            raise ValueError(
                f"unknown config key {prefix}{key!s}; allowed: "
                + ", ".join(f"{prefix}{a}" for a in sorted(allowed))
            )
        if is_section(hints[key]):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{key} must be a mapping of {prefix}{key}.* fields")
            kwargs[key] = _build(hints[key], f"{prefix}{key}.", value)
        else:
            kwargs[key] = _coerce(hints[key], value)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    """Accept an int where a float is declared (YAML writes 1e-4 as a float but 2 as an int)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if float in args and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
