"""The compute precision of ``train.dtype``: ``auto`` is decided by measurement, never by a flag.

    choice = resolve("auto", device, shape)   # Choice(name="fp32", amp=None, timings_ms=..., ...)

A CPU flag says whether bf16 is computed natively, not whether it is faster: on a 2-core Intel
Xeon with ``avx512_bf16`` a bf16 matmul of the bundled model's shapes runs at about half the fp32
rate (and so does training), on AMD EPYC bf16 is faster. So ``auto`` times one matmul of the
model's own shapes (tokens x hidden x MLP width) in each candidate precision, a fraction of a
second, and takes the fastest; the verdict is cached per machine, thread count and shape in
``<cache>/precision.json`` (see ``study.trial.models.cache_root``), and every trial's
env.json records the choice and the timings behind it.

Candidates: fp32 everywhere; bf16 where the hardware computes it natively (a CUDA device that
supports it; a CPU with AVX512-BF16 or AMX); fp16 on CUDA, trained with a gradient scaler
(``torch.amp.GradScaler``), so a GPU without bf16 (T4, V100) gets fp16 when it is faster. A
16-bit candidate must beat fp32 by more than ``TIE``, and fp16 must beat bf16 by as much.

The storage dtype of the frozen base (``storage_dtype``) follows: fp32 on CPU (bf16 there is
autocast only); on CUDA the 16-bit compute dtype itself, so "16-bit" holds bf16 (fp16 where
bf16 is missing) weights, not fp32 ones.
"""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from study.record import write_json
from study.trial.environment import cpu_name
from study.trial.models.bundled import cache_root

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
TIE = 0.05
# ... and by more than this per matmul: a tiny model's matmuls are launch-bound on a GPU, where a
# few microseconds decide nothing about a trial's speed (an H200 timed fp16 fastest by chance)
TIE_MS = 0.02  # bf16 must be more than 5% faster to be chosen: fp32 loses no precision
MAX_TOKENS = 1024  # rows of the timed matmul (a batch's tokens, capped: the ratio is what counts)
BUDGET_S = 0.15  # timing per candidate, after one warm-up


@dataclass(frozen=True)
class Choice:
    """A resolved ``train.dtype``: the name used, the autocast dtype (None: plain fp32), and for
    ``auto`` the per-candidate matmul times (ms) it was chosen from and whether they were cached."""

    asked: str
    name: str
    timings_ms: dict[str, float] | None = None
    cached: bool = False

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype (None: plain fp32)."""
        return AMP.get(self.name)

    @property
    def scaler(self) -> bool:
        """Whether training needs a gradient scaler (fp16: its range underflows small grads)."""
        return self.name == "fp16"

    def record(self) -> dict:
        """What env.json keeps of the choice."""
        return asdict(self)


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (a candidate for ``auto``; ``bf16`` needs it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def check_supported(asked: str, device: torch.device) -> None:
    """ValueError when ``train.dtype=asked`` cannot run as asked on ``device``."""
    if asked == "bf16" and not bf16_supported(device):
        other = "fp16, fp32" if device.type == "cuda" else "fp32"
        raise ValueError(f"train.dtype bf16 is not supported on this {device.type} (no native "
                         f"bf16); use train.dtype {other} or auto")
    if asked == "fp16" and device.type != "cuda":
        raise ValueError(f"train.dtype fp16 needs a CUDA device (this is a {device.type}); use "
                         "train.dtype fp32, bf16 or auto")


def candidates(device: torch.device) -> list[str]:
    """The precisions ``auto`` times on ``device``."""
    out = ["fp32", "bf16"] if bf16_supported(device) else ["fp32"]
    return [*out, "fp16"] if device.type == "cuda" else out


def storage_dtype(device: torch.device, compute: str, method: str) -> torch.dtype:
    """The dtype the frozen base's float weights are stored in: fp32 on CPU; on CUDA the 16-bit
    compute dtype (``compute`` is a resolved ``Choice.name``), or fp32 for fp32 compute and
    for full fine-tuning (AdamW updates fp32 master weights)."""
    if device.type != "cuda" or method == "full":
        return torch.float32
    return AMP.get(compute, torch.float32)


def cuda_default(device: torch.device) -> str:
    """The 16-bit precision a CUDA device computes natively: bf16, else fp16."""
    return "bf16" if bf16_supported(device) else "fp16"


def preferred(device: torch.device) -> str:
    """What ``auto`` takes on a tie (``choose``), and what a trial loads in before measuring:
    the GPU's native 16-bit type on CUDA, fp32 on CPU."""
    return cuda_default(device) if device.type == "cuda" else "fp32"


def time_matmul(shape: tuple[int, int, int], name: str, device: torch.device) -> float:
    """Median ms of one (tokens x hidden) @ (hidden x width) matmul in precision ``name``; on CPU
    what it takes with the machine to itself (a busy machine's figure would slow every estimate
    and decision cached from it: the demo's trials once ran 2x faster than so estimated)."""
    dtype = AMP.get(name, torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(0)
    m, k, n = shape
    a = torch.randn(m, k, generator=gen).to(device, dtype)
    b = torch.randn(k, n, generator=gen).to(device, dtype)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    threads = torch.get_num_threads()
    times, start = [], time.perf_counter()
    for i in range(100):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        sync()
        wall = (time.perf_counter() - t0) * 1e3
        if not cuda:  # the CPU time each of torch's threads got: on a machine another process
            # keeps busy, a share of the wall time (its threads spin, so alone the two agree)
            wall = min(wall, (time.process_time() - c0) * 1e3 / threads)
        if i > 0:  # the first one warms up (kernel choice, caches)
            times.append(wall)
        if i >= 3 and time.perf_counter() - start > BUDGET_S:
            break
    return statistics.median(times)


def choose(timings_ms: dict[str, float], prefer: str = "fp32") -> str:
    """The fastest precision, unless ``prefer`` is within ``TIE`` (or ``TIE_MS``) of it; and bf16
    over fp16 unless fp16 is clearly faster (bf16 needs no loss scaling).

    ``prefer`` breaks ties: fp32 on CPU (bf16 there is autocast over fp32 weights: it loses
    precision and saves no memory), the GPU's native 16-bit type on CUDA (it halves the base's
    storage; a tiny model's matmuls take the same time in every precision)."""
    def clearly_faster(a: str, b: str) -> bool:
        return timings_ms[a] < timings_ms[b] * (1 - TIE) and timings_ms[b] - timings_ms[a] > TIE_MS

    best = min(timings_ms, key=timings_ms.get)
    if best == "fp16" and "bf16" in timings_ms and not clearly_faster("fp16", "bf16"):
        best = "bf16"
    return best if best != prefer and clearly_faster(best, prefer) else prefer


def matmul_shape(model, tokens: int) -> tuple[int, int, int]:
    """The timed matmul's shape for a model (or its config): (tokens, hidden, MLP width)."""
    c = getattr(model, "config", model)
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0)
    width = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
    return (max(1, min(tokens, MAX_TOKENS)), int(hidden), int(width))


def _machine_key(device: torch.device, shape: tuple[int, int, int]) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = cpu_name()
    return json.dumps([device.type, where, platform.machine(), torch.__version__,
                       torch.get_num_threads(), list(shape)])


def resolve(
    asked: str,
    device: torch.device,
    shape: tuple[int, int, int],
    cache_file: Path | None = None,
    timer: Callable[[tuple[int, int, int], str, torch.device], float] = time_matmul,
) -> Choice:
    """The precision for ``train.dtype=asked`` on ``device``: fp32 and bf16 as asked, ``auto``
    measured (or read from ``cache_file``, default ``<cache>/precision.json``).

    Raises:
        ValueError: bf16 was asked where the device does not compute it natively.
    """
    check_supported(asked, device)
    if asked != "auto":
        return Choice(asked, asked)
    timings, cached = matmul_timings(device, shape, cache_file, timer)
    return Choice(asked, choose(timings, preferred(device)), timings, cached=cached)


def matmul_timings(
    device: torch.device,
    shape: tuple[int, int, int],
    cache_file: Path | None = None,
    timer: Callable[[tuple[int, int, int], str, torch.device], float] = time_matmul,
) -> tuple[dict[str, float], bool]:
    """ms of the ``shape`` matmul in each candidate precision on ``device``, and whether they
    came from the cache (the time estimate reads the same figures)."""
    if cache_file is None:
        cache_file = cache_root() / "precision.json"
    key = _machine_key(device, shape)
    cache = _read_cache(cache_file)
    if key in cache:
        return cache[key], True
    timings = {name: round(timer(shape, name, device), 4) for name in candidates(device)}
    with contextlib.suppress(OSError):  # an unwritable cache only means measuring again
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache_file, {**_read_cache(cache_file), key: timings})
    return timings, False


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: measured again and rewritten
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and "fp32" in v and all(
        isinstance(t, (int, float)) and t > 0 for t in v.values())}


STALE = 0.10  # a cached timing this much slower than one taken now was measured on a busy machine
_checked: set[str] = set()  # the keys re-timed in this process


def checked_timings(
    device: torch.device,
    shape: tuple[int, int, int],
    cache_file: Path | None = None,
    timer: Callable[[tuple[int, int, int], str, torch.device], float] = time_matmul,
) -> dict[str, float]:
    """:func:`matmul_timings` for the time model, re-timed once per process: a cached figure
    taken while other work shared the machine reads a fraction of its rate, and every estimate
    after it would be that much too slow (the demo's trials ran 35% faster than estimated). Each
    candidate keeps the faster of the cached and the new time, written back where one improved
    by more than ``STALE``; a figure taken on a busy machine now never replaces a better one."""
    if cache_file is None:
        cache_file = cache_root() / "precision.json"
    timings, cached = matmul_timings(device, shape, cache_file, timer)
    key = _machine_key(device, shape)
    if not cached or key in _checked:
        return timings
    _checked.add(key)
    fresh = {name: round(timer(shape, name, device), 4) for name in timings}
    best = {name: min(timings[name], fresh[name]) for name in timings}
    if any(best[name] < timings[name] * (1 - STALE) for name in timings):
        with contextlib.suppress(OSError):
            write_json(cache_file, {**_read_cache(cache_file), key: best})
    return best
