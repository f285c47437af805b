"""A trial's checkpoint: trainable weights, optimizer state, RNG state and progress.

    save_checkpoint(record.checkpoint_dir(trial_dir), model, optimizer, progress)
    path = find_checkpoint(record.checkpoint_dir(trial_dir))    # None: start from scratch
    progress = load_checkpoint(path, model, optimizer)

The directory is replaced whole: the new one is written complete beside it (``state.json``
last), the old one renamed aside, the new one renamed in. A kill leaves the previous checkpoint
or the new one, and :func:`find_checkpoint` puts back whichever is complete. Tensors are stored
with safetensors and read back without pickle:
``trainable.safetensors`` (parameters that train), ``optimizer.safetensors`` (AdamW moments and
the RNG states) and ``state.json`` (param groups, scalar optimizer state, trial progress).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from study import record

WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer, state: dict) -> None:
    """Trainable weights, optimizer state, RNG state and trial progress, swapped in atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }
    save_file(weights, tmp / WEIGHTS)
    opt_tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        opt_tensors["rng.cuda"] = torch.cuda.get_rng_state()
    scalars: dict = {}
    groups = []
    if optimizer is not None:
        sd = optimizer.state_dict()
        groups = sd["param_groups"]
        for idx, st in sd["state"].items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    opt_tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
    save_file(opt_tensors, tmp / OPTIMIZER)
    record.write_json(tmp / STATE, {"param_groups": groups, "scalars": scalars, **state})
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: Path) -> Path | None:
    """The complete checkpoint at ``path``, repairing a swap a kill interrupted; None if none.

    Between the two renames of :func:`save_checkpoint` there is no ``path``: the new checkpoint
    (complete, since ``state.json`` is written last) is beside it, and is moved in.
    """
    path = Path(path)
    if (path / STATE).is_file():
        return path
    for aside in (path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")):
        if (aside / STATE).is_file():
            shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover, if any
            os.replace(aside, path)
            return path
    return None


def load_trainable_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Copy a checkpoint's trainable weights into the model's parameters of the same names.

    Raises:
        ValueError: no weights in ``checkpoint``, or they name a parameter the model lacks.
    """
    path = Path(checkpoint) / WEIGHTS
    if not path.is_file():
        raise ValueError(f"{checkpoint} holds no {WEIGHTS}: not a checkpoint")
    weights = load_file(path)
    params = dict(model.named_parameters())
    unknown = [n for n in weights if n not in params]
    if unknown:
        raise ValueError(f"{path} does not match the model: unknown {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer) -> dict:
    """Restore what save_checkpoint wrote; return the saved trial progress."""
    path = Path(path)
    state = record.read_json(path / STATE)
    load_trainable_weights(model, path)
    tensors = load_file(path / OPTIMIZER)
    torch.set_rng_state(tensors.pop("rng.cpu"))
    cuda_rng = tensors.pop("rng.cuda", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    if optimizer is not None and state["param_groups"]:
        opt_state: dict = {}
        for key, value in tensors.items():
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
        for idx, extra in state["scalars"].items():
            opt_state.setdefault(int(idx), {}).update(extra)
        # safetensors stores tensors contiguous; give each state tensor its parameter's strides
        # again (lora_B is r-major), since fused AdamW walks param and state memory in lockstep.
        params_by_idx = [p for group in optimizer.param_groups for p in group["params"]]
        for idx, entries in opt_state.items():
            param = params_by_idx[idx]
            for name, value in entries.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    entries[name] = torch.empty_strided(
                        param.shape, param.stride(), dtype=value.dtype, device=param.device
                    ).copy_(value)
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    return state
