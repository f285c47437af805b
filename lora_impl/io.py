"""Save and load adapters in PEFT's file format.

    save_adapter(model, "out/adapter")        # adapter_config.json + adapter_model.safetensors
    load_adapter(base_model, "out/adapter")   # ours or one saved by PEFT

The files are what ``peft.PeftModel.from_pretrained`` reads: tensor keys
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` and a LoRA ``adapter_config.json``.
Weights are read with safetensors only, never with pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lora_impl.inject import InjectResult, compact_targets, inject_lora
from lora_impl.layer import LoRALinear, lora_layers

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under PEFT's key names."""
    state = {}
    for name, layer in lora_layers(model):
        for part in ("lora_A", "lora_B"):
            weight = getattr(layer, part).weight
            state[f"{KEY_PREFIX}{name}.{part}.weight"] = weight.detach().cpu().contiguous()
    return state


def adapter_config(model: nn.Module, base_model_name_or_path: str | None = None) -> dict:
    """PEFT's LoraConfig fields describing the model's adapters.

    Raises:
        ValueError: no adapters, or adapters with different hyperparameters (one config can't
            describe them).
    """
    layers = [layer for _, layer in lora_layers(model)]
    if not layers:
        raise ValueError("the model has no LoRA adapters to save")
    first = layers[0]
    for layer in layers[1:]:
        if (layer.rank, layer.alpha, layer.rslora, layer.dropout) != (
            first.rank,
            first.alpha,
            first.rslora,
            first.dropout,
        ):
            raise ValueError("adapters with different rank/alpha/dropout cannot share one config")
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": first.dropout,
        "target_modules": compact_targets(model),
        "use_rslora": first.rslora,
        "init_lora_weights": True if first.init == "kaiming" else "gaussian",
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers),
        "bias": "none",
        "modules_to_save": None,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
    }


def save_adapter(
    model: nn.Module, path: str | os.PathLike, base_model_name_or_path: str | None = None
) -> Path:
    """Write the adapters of ``model`` to directory ``path`` in PEFT's format; return ``path``.

    Each file is written to a temporary name and renamed, so a crash never leaves a torn file.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = adapter_config(model, base_model_name_or_path)
    _atomic_write(path / WEIGHTS_NAME, lambda p: save_file(adapter_state_dict(model), p))
    _atomic_write(path / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return path


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_UNSUPPORTED = {  # PEFT LoraConfig fields with non-default values this implementation lacks
    "use_dora": lambda v: bool(v),
    "bias": lambda v: v not in (None, "none"),
    "modules_to_save": lambda v: bool(v),
    "rank_pattern": lambda v: bool(v),
    "alpha_pattern": lambda v: bool(v),
    "layers_to_transform": lambda v: v is not None,
    "target_parameters": lambda v: bool(v),
    "trainable_token_indices": lambda v: bool(v),
}


def read_adapter_config(path: str | os.PathLike) -> dict:
    """Parse and check ``adapter_config.json``; ValueError names what is missing or unsupported."""
    config_path = Path(path) / CONFIG_NAME
    if not config_path.is_file():
        raise ValueError(f"no {CONFIG_NAME} in {path}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type must be LORA, got {config.get('peft_type')!r}")
    for field, unsupported in _UNSUPPORTED.items():
        if field in config and unsupported(config[field]):
            raise ValueError(f"{config_path}: {field}={config[field]!r} is not supported")
    if not config.get("target_modules"):
        raise ValueError(f"{config_path}: target_modules is empty")
    return config


def load_adapter(
    model: nn.Module, path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> InjectResult:
    """Inject adapters as described by ``path``'s config into ``model`` and load their weights.

    Raises:
        ValueError: a bad or unsupported config, or weights that do not match its modules
            (the model is left with freshly initialised adapters in that case).
    """
    config = read_adapter_config(path)
    weights_path = Path(path) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise ValueError(f"no {WEIGHTS_NAME} in {path}")
    targets = config["target_modules"]
    result = inject_lora(
        model,
        targets if isinstance(targets, str) else list(targets),
        rank=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout", 0.0),
        rslora=config.get("use_rslora", False),
        init="gaussian" if config.get("init_lora_weights") == "gaussian" else "kaiming",
        dtype=dtype,
    )
    state = load_file(weights_path)
    expected = dict(_lora_parameters(model))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights_path} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    with torch.no_grad():
        for key, param in expected.items():
            tensor = state[key]
            if tensor.shape != param.shape:
                raise ValueError(f"{key}: shape {tuple(tensor.shape)} != {tuple(param.shape)}")
            param.copy_(tensor.to(param.dtype))
    return result


def _lora_parameters(model: nn.Module):
    for name, layer in lora_layers(model):
        assert isinstance(layer, LoRALinear)
        yield f"{KEY_PREFIX}{name}.lora_A.weight", layer.lora_A.weight
        yield f"{KEY_PREFIX}{name}.lora_B.weight", layer.lora_B.weight
