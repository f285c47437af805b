"""Helpers shared by the benchmarks: the machine description and medians."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from study.trial.environment import cpu_name


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
        # the vector ISA torch's CPU kernels dispatch to: two hosts both named "AMD EPYC" differed
        # 4x in an fp32 matmul and one had no native bf16 (docs/BENCHMARKS.md, 2026-12-07)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
        f"{info['cpu']} ({info.get('cpu_capability') or 'ISA unknown'}), {info['cores']} cores, "
        f"{info['ram_gb']} GiB RAM{gpu}; "
        f"{info['torch_threads']} torch threads; Python {info['python']}; {libs}"
    )


def median(xs: list[float]) -> float:
    """The median of ``xs``, NaN when it is empty."""
    return statistics.median(xs) if xs else float("nan")


def run_train_one(out: Path, *flags: str, quiet: bool = False) -> tuple[dict, float]:
    """Run ``python -m study.train_one --out OUT FLAGS`` in a process of its own (from the
    repository root); return its final metrics and wall time in seconds. ``quiet``: its
    stderr (progress bars) is dropped too."""
    from study import record

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "study.train_one", "--out", str(out), *flags]
    subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)
    return record.read_metrics(out), time.perf_counter() - t0


def write_out(name: str, text: str) -> None:
    """Print a benchmark's table and keep it as bench/out/``name`` (git-ignored)."""
    print(text)
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / name).write_text(text + "\n")
