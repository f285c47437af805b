"""Helpers shared by the benchmarks: the machine description and medians."""

from __future__ import annotations

import os
import platform
import statistics
from importlib import metadata

import torch

from study.environment import cpu_name


def machine() -> dict:
    """CPU model, cores, RAM, GPU and library versions: printed with every table."""
    cpu = cpu_name() or "unknown CPU"
    try:
        with open("/proc/meminfo") as f:
            mem_gb = int(f.readline().split()[1]) / 2**20
    except OSError:
        mem_gb = float("nan")
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(mem_gb, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    for pkg in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def machine_line(info: dict) -> str:
    """One markdown line describing the machine."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    libs = ", ".join(f"{k} {info[k]}" for k in ("torch", "transformers", "peft", "bitsandbytes"))
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gb']} GiB RAM{gpu}; "
        f"{info['torch_threads']} torch threads; Python {info['python']}; {libs}"
    )


def median(xs: list[float]) -> float:
    """The median of ``xs``, NaN when it is empty."""
    return statistics.median(xs) if xs else float("nan")
