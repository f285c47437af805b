"""The host allocator of a CPU trial: glibc's malloc, set so that the resident peak the trial
reports is what it holds rather than what the allocator kept.

    setting = configure()        # once per trial process, before the model loads
    trim()                       # hand freed heap pages back (each measured segment starts so)

On CPU a trial's peak (``study.trial.resources``: the RSS high-water mark) grows over hundreds
of steps although the tensors it holds do not: glibc raises its mmap threshold each time a large
block is freed (up to 32 MB), after which activations come from the heap, whose freed pages stay
resident and fragment. Fixing the threshold keeps large tensors in their own mappings, returned
on free; ``malloc_trim`` hands back what the heap freed (the float weights a 4/8-bit load
replaced, an evaluation's buffers). Which of these a trial uses is the measured choice
``HOST_ALLOCATOR`` (docs/BENCHMARKS.md, ``bench/memory_model.py --long``);
``LORA_STUDY_HOST_ALLOCATOR`` overrides it for a benchmark's A/B runs. CUDA trials and non-glibc
systems are left alone (``None``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

HOST_ALLOCATORS = ("glibc", "trim", "mmap", "mmap+trim")  # glibc: as the process started
HOST_ALLOCATOR = "glibc"
ENV = "LORA_STUDY_HOST_ALLOCATOR"
MMAP_THRESHOLD = 1 << 20  # bytes: blocks at least this large get a mapping of their own
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)


@functools.cache
def _libc():
    """glibc, or None where malloc is another library's (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def chosen() -> str:
    """The setting in force: ``LORA_STUDY_HOST_ALLOCATOR`` if set, else ``HOST_ALLOCATOR``."""
    value = os.environ.get(ENV, HOST_ALLOCATOR)
    if value not in HOST_ALLOCATORS:
        raise ValueError(f"{ENV} must be one of {', '.join(HOST_ALLOCATORS)}, got {value!r}")
    return value


_configured: list[str] = []  # the setting applied in this process (mallopt is per process)


def configure() -> str | None:
    """Apply the chosen setting to this process (once); the setting, or None where there is no
    glibc to set (the trial records it in env.json)."""
    libc = _libc()
    if libc is None:
        return None
    setting = chosen()
    if not _configured:
        if "mmap" in setting and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
            raise OSError(f"mallopt(M_MMAP_THRESHOLD, {MMAP_THRESHOLD}) failed")
        _configured.append(setting)
    return _configured[0]


def trim() -> None:
    """``malloc_trim(0)`` where the setting includes trim (else nothing)."""
    if _configured and "trim" in _configured[0]:
        _libc().malloc_trim(0)
