"""env.json: what a trial's numbers depend on besides its config.

Versions, hardware, thread count, compute dtype, seed, the attention implementation the model
runs and the share of padding in the planned micro-batches. ``study.reproduce`` compares two of
these records to say whether a re-run is like for like.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from study.config import TrialConfig
from study.trial.batches import Batcher
from study.trial.data import Example
from study.trial.packing import attn_implementation
from study.trial.train import total_steps


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


COMPUTE = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + grad scaler"}
FLOAT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def weights_label(bits: int, quant_type: str, storage: torch.dtype) -> str:
    """What the frozen base's linear weights are stored as: fp32, bf16, fp16, int8, nf4, fp4."""
    if bits == 8:
        return "int8"
    if bits == 4:
        return quant_type
    return FLOAT_NAMES.get(storage, str(storage).removeprefix("torch."))


def padding_share(cfg: TrialConfig, train: list[Example]) -> float | None:
    """Padded token slots / all token slots over the micro-batches the trial will train on
    (``Batcher.padding_share``: they are known from the lengths before training); 0 for pack,
    None for a trial that trains nothing (``base``)."""
    if cfg.method == "base" or not train:
        return None
    t = cfg.train
    batcher = Batcher(train, t.batch_size, cfg.seed, pad_id=0, mode=t.batching)  # shapes only
    return batcher.padding_share(total_steps(t, len(train)) * t.grad_accum)


def environment(
    cfg: TrialConfig, device: torch.device, precision: dict, storage: torch.dtype = torch.float32,
    model: torch.nn.Module | None = None, train: list[Example] | None = None,
    compile_choice: dict | None = None, host_allocator: str | None = None,
) -> dict:
    """What a result depends on besides its config: versions, hardware, threads, dtypes, seed.

    ``weights`` is the storage dtype of the base's linear weights (``weights_label``),
    ``float_weights`` that of its other float parameters (embeddings, norms, the head) and
    ``compute_dtype`` what the forward and backward compute in; ``attn_implementation`` the
    attention ``model`` runs (sdpa, eager, ...) and ``padding_share`` that of the padded slots
    in the micro-batches it trains on (``padding_share``; None without ``train``);
    ``host_allocator`` the CPU trial's malloc setting (``study.trial.host_memory``; None on CUDA
    or without glibc)."""
    packages = {}
    for pkg in ("torch", "transformers", "bitsandbytes", "safetensors", "ray", "optuna"):
        try:
            packages[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            packages[pkg] = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "packages": packages,
        "git_commit": commit,
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "compute_dtype": COMPUTE.get(precision["name"], precision["name"]),
        "dtype_choice": precision,  # train.dtype asked, used, and auto's timings (Choice.record)
        "weights": weights_label(cfg.quant.bits, cfg.quant.type, storage),
        "float_weights": FLOAT_NAMES.get(storage, str(storage)),
        "seed": cfg.seed,
        "attn_implementation": attn_implementation(model) if model is not None else None,
        "padding_share": padding_share(cfg, train) if train is not None else None,
        "compile": compile_choice,  # train.compile asked, chosen and why (compiling.Choice.record)
        "host_allocator": host_allocator,
    }
