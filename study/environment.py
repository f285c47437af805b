"""env.json: what a trial's numbers depend on besides its config.

Versions, hardware, thread count, compute dtype and seed. ``study.reproduce`` compares two of
these records to say whether a re-run is like for like.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from study.config import TrialConfig


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


def environment(cfg: TrialConfig, device: torch.device, precision: dict) -> dict:
    """What a result depends on besides its config: versions, hardware, threads, dtype, seed."""
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
        "compute_dtype": "bf16 autocast" if precision["name"] == "bf16" else "fp32",
        "dtype_choice": precision,  # train.dtype asked, used, and auto's timings (Choice.record)
        "weights": f"{cfg.quant.bits}-bit" + (f" {cfg.quant.type}" if cfg.quant.bits == 4 else ""),
        "seed": cfg.seed,
    }
