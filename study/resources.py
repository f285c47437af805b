"""Resource metrics: peak memory over a phase and synchronised wall-clock time.

Peak memory is measured the same way everywhere (trials and benchmarks):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at phase start;
- CPU: the process's RSS high-water mark ``VmHWM`` after resetting it at phase start by writing
  ``5`` to ``/proc/self/clear_refs`` (Linux). The RSS at that moment is the start memory.
"""

from __future__ import annotations

import time

import torch


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Training-phase peak memory in MB: CUDA max allocated, or the CPU RSS high-water mark.

    On CPU, `start()` resets the kernel's high-water mark (write 5 to /proc/self/clear_refs) so
    the peak covers only what follows, and records the RSS at that moment.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.start_mb = 0.0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.start_mb = _status_kb("VmRSS") / 1024

    def peak(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return _status_kb("VmHWM") / 1024


def now(device: torch.device) -> float:
    """perf_counter after a CUDA sync (CPU work is synchronous, nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
