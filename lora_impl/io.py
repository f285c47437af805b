"""Save and load adapters in PEFT's file format.

    save_adapter(model, "out/adapter")        # adapter_config.json + adapter_model.safetensors
    load_adapter(base_model, "out/adapter")   # ours or one saved by PEFT

The files are what ``peft.PeftModel.from_pretrained`` reads: tensor keys
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` and a LoRA ``adapter_config.json``.
Modules trained in full beside the adapter (a classifier's ``score`` head) are PEFT's
``modules_to_save``: their weights under ``base_model.model.<module>.<param>``, the task type
``SEQ_CLS`` when one is a classifier head. Weights are read with safetensors only, never with
pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lora_impl.dora import DoRALinear
from lora_impl.inject import CLASSIFIER_HEADS, InjectResult, compact_targets, inject_lora
from lora_impl.layer import LoRALinear, LoraSpec, lora_layers

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME)  # what a saved adapter directory holds
KEY_PREFIX = "base_model.model."


def adapter_weights_file(path: str | os.PathLike) -> Path:
    """The weights file of the adapter directory ``path`` (which need not exist)."""
    return Path(path) / WEIGHTS_NAME


def has_adapter(path: str | os.PathLike) -> bool:
    """True if directory ``path`` holds both files of a saved adapter (config and weights)."""
    return all((Path(path) / name).is_file() for name in ADAPTER_FILES)


def adapter_state_dict(model: nn.Module, modules_to_save: tuple[str, ...] = ()
                       ) -> dict[str, torch.Tensor]:
    """The adapter weights, and those of ``modules_to_save``, under PEFT's key names."""
    state = {}
    for key, weight in _lora_parameters(model):
        layer = model.get_submodule(key.removeprefix(KEY_PREFIX).rsplit(".lora_", 1)[0])
        if _user_variant(layer) and ".lora_" in key:
            weight = _as_plain_lora(layer)[0 if ".lora_A." in key else 1]
        elif converted(layer) and ".lora_A." in key:
            weight = torch.cat([weight, layer.init_A], dim=0)  # A' = [A; A0]
        elif converted(layer) and ".lora_B." in key:
            weight = torch.cat([weight, -layer.init_B], dim=1)  # B' = [B, -B0]
        state[key] = weight.detach().cpu().contiguous()
    for key, param in _saved_module_parameters(model, modules_to_save):
        state[key] = param.detach().cpu().contiguous()
    return state


def _user_variant(layer: nn.Module) -> bool:
    return type(layer) not in (LoRALinear, DoRALinear)


def _as_plain_lora(layer: LoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the plain LoRA with a user variant's update: s B A = delta_weight(), from its
    SVD truncated to rank r (exact when the update has rank <= r, as a LoRA-shaped variant's
    does; PEFT cannot express the variant itself)."""
    with torch.no_grad():
        delta = layer.delta_weight().float()
        delta = delta.T if layer.fan_in_fan_out else delta  # (out, in)
        u, sv, vh = torch.linalg.svd(delta / layer.scaling, full_matrices=False)
        root = torch.sqrt(sv[: layer.rank])
        a = root[:, None] * vh[: layer.rank]
        b = u[:, : layer.rank] * root
    return a.to(layer.spec.dtype), b.to(layer.spec.dtype)


def converted(layer: nn.Module) -> bool:
    """Whether ``layer``'s adapter is saved converted to a plain LoRA of the original base (a
    PiSSA / OLoRA init; PEFT's ``path_initial_model_for_weight_conversion``, lora_impl.inits)."""
    return hasattr(layer, "init_A")


def _saved_module_parameters(model: nn.Module, names) -> list[tuple[str, torch.Tensor]]:
    """(PEFT key, parameter) of every module whose name is, or ends with, one of ``names``."""
    out = []
    for module_name, module in model.named_modules():
        if module_name and any(module_name == n or module_name.endswith("." + n) for n in names):
            for param_name, param in module.named_parameters():
                out.append((f"{KEY_PREFIX}{module_name}.{param_name}", param))
    return out


def adapter_config(model: nn.Module, base_model_name_or_path: str | None = None,
                   modules_to_save: tuple[str, ...] = ()) -> dict:
    """PEFT's LoraConfig fields describing the model's adapters.

    Raises:
        ValueError: no adapters, or adapters with different hyperparameters (one config can't
            describe them).
    """
    layers = [layer for _, layer in lora_layers(model)]
    if not layers:
        raise ValueError("the model has no LoRA adapters to save")
    spec = layers[0].spec
    for layer in layers[1:]:
        if dataclasses.replace(layer.spec, dtype=spec.dtype) != spec:
            raise ValueError(
                f"adapters with different rank/alpha/dropout/rslora/init cannot share one "
                f"config: {spec} and {layer.spec}"
            )
    classifier = any(name in CLASSIFIER_HEADS for name in modules_to_save)
    rank, alpha, init = spec.rank, spec.alpha, spec.init
    if converted(layers[0]):  # rank 2r and the same scale: alpha x 2 (x sqrt(2) under rsLoRA)
        rank, alpha, init = 2 * rank, alpha * (2 ** 0.5 if spec.rslora else 2), "kaiming"
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if classifier else "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": spec.dropout,
        "target_modules": compact_targets(model),
        "use_rslora": spec.rslora,
        "init_lora_weights": True if init == "kaiming" else "gaussian",
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers),
        "bias": "none",
        "modules_to_save": list(modules_to_save) or None,
        "use_dora": isinstance(layers[0], DoRALinear),
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
    }


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    modules_to_save: tuple[str, ...] = (),
) -> Path:
    """Write the adapters of ``model`` to directory ``path`` in PEFT's format; return ``path``.
    ``modules_to_save``: names of modules saved whole beside them (a classifier's ``score``).

    Each file is written to a temporary name and renamed, so a crash never leaves a torn file.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = adapter_config(model, base_model_name_or_path, modules_to_save)
    state = adapter_state_dict(model, modules_to_save)
    _atomic_write(adapter_weights_file(path), lambda p: save_file(state, p))
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
    # modules saved whole: a classifier's head only (an lm_head may be tied to the embeddings,
    # which loading it in place would overwrite; PEFT keeps a separate copy)
    "modules_to_save": lambda v: bool(v) and any(n not in CLASSIFIER_HEADS for n in v),
    "bias": lambda v: v not in (None, "none"),
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


def spec_from_peft_config(config: dict, dtype: torch.dtype = torch.float32) -> LoraSpec:
    """The LoraSpec a PEFT LoraConfig dict describes, its adapter weights in ``dtype``.

    Any ``init_lora_weights`` but ``"gaussian"`` maps to kaiming: B is zero for both, and a
    loaded adapter's weights replace the initial ones anyway.

    Raises:
        ValueError: ``r`` or ``lora_alpha`` missing, or a value LoraSpec rejects.
    """
    missing = [field for field in ("r", "lora_alpha") if field not in config]
    if missing:
        raise ValueError(f"adapter config lacks {', '.join(missing)}")
    return LoraSpec(
        rank=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout", 0.0),
        rslora=config.get("use_rslora", False),
        init="gaussian" if config.get("init_lora_weights") == "gaussian" else "kaiming",
        variant="dora" if config.get("use_dora") else "lora",
        dtype=dtype,
    )


def load_adapter(
    model: nn.Module, path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> InjectResult:
    """Inject adapters as described by ``path``'s config into ``model`` and load their weights.

    The weights of its ``modules_to_save`` (a classifier's head) replace the model's own.

    Raises:
        ValueError: a bad or unsupported config, or weights that do not match its modules
            (the model is left with freshly initialised adapters in that case).
    """
    config = read_adapter_config(path)
    if not adapter_weights_file(path).is_file():
        raise ValueError(f"no {WEIGHTS_NAME} in {path}")
    try:
        spec = spec_from_peft_config(config, dtype)
    except ValueError as err:
        raise ValueError(f"{Path(path) / CONFIG_NAME}: {err}") from None
    targets = config["target_modules"]
    result = inject_lora(model, targets if isinstance(targets, str) else list(targets), spec)
    _copy_weights(model, config, path)
    return result


def load_adapter_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy the adapter saved at ``path`` into ``model``'s adapters, already injected (a run that
    starts from it, e.g. DPO after SFT).

    Raises:
        ValueError: ``path`` is not an adapter, or its rank, alpha, scaling, variant, targets or
            shapes are not those of the model's adapters (the message names the first).
    """
    config = read_adapter_config(path)
    layers = [layer for _, layer in lora_layers(model)]
    if not layers:
        raise ValueError("the model has no adapters to load it into")
    spec, ours = spec_from_peft_config(config), layers[0]
    for field, theirs, mine in (("r", spec.rank, ours.rank), ("lora_alpha", spec.alpha, ours.alpha),
                                ("use_rslora", spec.rslora, ours.rslora),
                                ("use_dora", spec.variant == "dora", isinstance(ours, DoRALinear))):
        if float(theirs) != float(mine):
            raise ValueError(f"its {field} is {theirs}, the adapters here have {mine}")
    _copy_weights(model, config, path)


def _copy_weights(model: nn.Module, config: dict, path: str | os.PathLike) -> None:
    """The weights file of ``path`` into the model's adapters (and modules_to_save)."""
    weights_path = adapter_weights_file(path)
    if not weights_path.is_file():
        raise ValueError(f"no {WEIGHTS_NAME} in {path}")
    state = load_file(weights_path)
    # PEFT lists every head name a SEQ_CLS model might have ("classifier", "score"): the ones
    # this model has are loaded, and a file holding weights of one it lacks does not match
    expected = dict(_lora_parameters(model))
    expected |= dict(_saved_module_parameters(model, config.get("modules_to_save") or ()))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights_path} does not fit the adapters here (other target modules?): missing "
            f"{missing[:2]}, unexpected {unexpected[:2]} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected)"
        )
    with torch.no_grad():
        for key, param in expected.items():
            tensor = state[key]
            if tensor.shape != param.shape:
                raise ValueError(f"{key}: shape {tuple(tensor.shape)} != {tuple(param.shape)}")
            param.copy_(tensor.to(param.dtype))


def _lora_parameters(model: nn.Module):
    for name, layer in lora_layers(model):
        assert isinstance(layer, LoRALinear)
        yield f"{KEY_PREFIX}{name}.lora_A.weight", layer.lora_A.weight
        yield f"{KEY_PREFIX}{name}.lora_B.weight", layer.lora_B.weight
        if isinstance(layer, DoRALinear):  # PEFT's key for DoRA's magnitude
            yield f"{KEY_PREFIX}{name}.lora_magnitude_vector", layer.lora_magnitude
