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


def environment(cfg: TrialConfig, device: torch.device, amp: torch.dtype | None) -> dict:
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
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "packages": packages,
        "git_commit": commit,
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "compute_dtype": "bf16 autocast" if amp is not None else "fp32",
        "weights": f"{cfg.quant.bits}-bit" + (f" {cfg.quant.type}" if cfg.quant.bits == 4 else ""),
        "seed": cfg.seed,
    }
