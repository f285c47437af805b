"""TrialConfig: defaults, round trips, dotted keys, validation messages."""

from __future__ import annotations

import pytest

from study.config import TrialConfig, flatten


def test_defaults_are_the_skills_recipe():
    cfg = TrialConfig()
    assert (cfg.method, cfg.model.name, cfg.data.task) == ("lora", "smollm2-135m", "skills")
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets) == (8, 16.0, "all-linear")
    assert (cfg.train.lr, cfg.train.steps, cfg.train.batch_size) == (3e-4, 150, 8)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"lora.rank": 32, "lora.alpha_ratio": 0.5, "quant.bits": 4, "quant.type": "fp4"},
        {"method": "full", "train.steps": None, "train.epochs": 2.5, "train.dtype": "bf16"},
        {"lora.targets": "q_proj,v_proj", "data.task": "lm", "seed": 7, "lora.rslora": True},
    ],
)
def test_round_trip_is_exact(values):
    cfg = TrialConfig.from_dict(values)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert TrialConfig.from_dict(flatten(cfg.to_dict())) == cfg


def test_dotted_and_nested_keys_are_the_same():
    dotted = TrialConfig.from_dict({"lora.rank": 4, "train.lr": 1e-3, "data.size": 100})
    nested = TrialConfig.from_dict(
        {"lora": {"rank": 4}, "train": {"lr": 1e-3}, "data": {"size": 100}}
    )
    mixed = TrialConfig.from_dict({"lora": {"rank": 4}, "train.lr": 1e-3, "data": {"size": 100}})
    assert dotted == nested == mixed


def test_alpha_ratio_resolves_to_alpha():
    assert TrialConfig.from_dict({"lora.rank": 16, "lora.alpha_ratio": 4}).lora.alpha == 64.0
    assert TrialConfig.from_dict({"lora.rank": 16}).lora.alpha == 32.0
    assert TrialConfig.from_dict({"lora.rank": 16, "lora.alpha": 8}).lora.alpha == 8.0
    assert TrialConfig.from_dict({"lora.alpha": 8}).lora.alpha_ratio is None


def test_integer_where_float_is_declared_is_accepted():
    assert TrialConfig.from_dict({"train.lr": 1}).train.lr == 1.0


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lora.rank": 0}, "lora.rank must be a positive integer"),
        ({"lora.rank": 2.5}, "lora.rank must be a positive integer"),
        ({"lora.alpha": -1}, "lora.alpha must be a number > 0"),
        ({"lora.alpha": 8, "lora.alpha_ratio": 4}, "disagree"),
        ({"lora.dropout": 1.0}, r"lora.dropout must be in \[0, 1\)"),
        ({"lora.init": "xavier"}, "lora.init must be one of kaiming, gaussian"),
        ({"quant.bits": 3}, "quant.bits must be one of 4, 8, 16"),
        ({"quant.type": "int4"}, "quant.type must be one of nf4, fp4"),
        ({"method": "qlora"}, "method must be one of lora, full, base"),
        ({"data.task": "chat"}, "data.task must be one of skills, lm, sft"),
        ({"data.size": -5}, "data.size must be a positive integer"),
        ({"train.dtype": "fp8"}, "train.dtype must be one of auto, fp32, bf16, fp16"),
        ({"train.epochs": 2, "train.steps": 100}, "exactly one of train.steps and train.epochs"),
        ({"train.steps": None}, "exactly one of train.steps and train.epochs"),
        ({"train.warmup": True}, "train.warmup must be an integer >= 0"),
        ({"train.grad_checkpointing": "yes"}, "train.grad_checkpointing must be true or false"),
        ({"quant.double_quant": 1}, "quant.double_quant must be true or false"),
        ({"train.lr": float("nan")}, "train.lr must be a number > 0"),
        ({"lora.rnk": 4}, r"unknown config key lora.rnk; allowed: .*lora.rank"),
        ({"optimizer": "sgd"}, "unknown config key 'optimizer'"),
        ({"method": "full", "quant.bits": 4}, "method=full needs quant.bits=16"),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(values, message):
    with pytest.raises(ValueError, match=message):
        TrialConfig.from_dict(values)


def test_epochs_alone_replace_the_default_steps():
    # A YAML file or --set that gives only train.epochs must not collide with steps' default.
    cfg = TrialConfig.from_dict({"train": {"epochs": 2}})
    assert (cfg.train.steps, cfg.train.epochs) == (None, 2.0)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg


def test_config_is_frozen():
    cfg = TrialConfig()
    with pytest.raises(AttributeError):
        cfg.lora.rank = 4  # type: ignore[misc]
