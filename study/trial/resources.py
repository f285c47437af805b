"""Resource metrics: peak memory over a phase, synchronised wall-clock time, latency (decode;
classify).

Peak memory is measured the same way everywhere (trials and benchmarks):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
- CPU: the process's RSS high-water mark ``VmHWM`` after resetting it by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux). It counts everything resident: weights, activations,
  optimizer state, allocator caches, Python.
A phase may be measured in segments (training, paused for each evaluation): the peak is the
maximum over segments, and the start memory is the resident/allocated memory when the first
segment began.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from study.trial import host_memory


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise KeyError(field)


def rss_mb() -> float:
    """Current resident set size of this process in MB."""
    return _status_kb("VmRSS") / 1024


def rss_peak_mb() -> float:
    """This process's RSS high-water mark (VmHWM) in MB, since the last reset by PeakMemory."""
    return _status_kb("VmHWM") / 1024


class PeakMemory:
    """Peak memory in MB over measured segments: ``resume()`` ... ``pause()`` ... ``peak()``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.start_mb: float | None = None
        self._peak = 0.0
        self._peak_reserved = 0.0  # CUDA: what the caching allocator held (allocated + cache)
        self._open = False

    def _reset(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        host_memory.trim()  # where the setting trims: the segment starts from a trimmed heap
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return rss_mb()

    def _current_peak(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            self._peak_reserved = max(self._peak_reserved, torch.cuda.max_memory_reserved() / 2**20)
            return torch.cuda.max_memory_allocated() / 2**20
        return rss_peak_mb()

    def resume(self) -> None:
        """Start a measured segment (the first one also records ``start_mb``)."""
        current = self._reset()
        if self.start_mb is None:
            self.start_mb = current
        self._open = True

    def pause(self) -> None:
        """End the current segment; what happens until the next ``resume`` is not counted."""
        if self._open:
            self._peak = max(self._peak, self._current_peak())
            self._open = False

    def peak(self) -> float:
        """The highest memory seen in any measured segment so far, in MB."""
        return max(self._peak, self._current_peak()) if self._open else self._peak

    def peak_reserved(self) -> float | None:
        """CUDA only: the highest memory reserved by the caching allocator (None on CPU)."""
        if not self.cuda:
            return None
        if self._open:
            self._current_peak()
        return self._peak_reserved


def now(device: torch.device) -> float:
    """perf_counter after a CUDA sync (CPU work is synchronous, nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


WARMUP_TOKENS = 2  # tokens the latency's warm-up run decodes


@contextlib.contextmanager
def _deployed(model: torch.nn.Module, autocast: torch.dtype | None):
    """The model in eval mode under one autocast block, its frozen weights cast once.

    Autocast caches its bf16 copy of a weight only for leaves that require grad; frozen
    weights would be re-cast at every call, which a model deployed in bf16 never does (and
    which made LoRA look 2x slower than full fine-tuning). Mark float weights as requiring grad
    for the measurement (no graph is built under no_grad), then restore. One autocast block
    around every run: leaving it empties its cast-weight cache, so a block per prompt would
    time the weights' casts again in every sample."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.is_floating_point() and not p.requires_grad]
    if autocast is not None:
        for p in frozen:
            p.requires_grad_(True)
    try:
        with torch.autocast(device.type, dtype=autocast or torch.float32,
                            enabled=autocast is not None):
            yield device
    finally:
        model.train(was_training)
        if autocast is not None:
            for p in frozen:
                p.requires_grad_(False)


@torch.no_grad()
def decode_latency_ms(
    model: torch.nn.Module,
    prompts: list[list[int]],
    new_tokens: int,
    pad_id: int,
    autocast: torch.dtype | None = None,
) -> float:
    """Median ms per generated token: greedy decoding with KV cache, batch 1, after a warm-up.

    Each prompt generates exactly ``new_tokens`` tokens (end-of-sequence is ignored), so the
    figure is prefill plus decode divided by the token count, comparable across models.
    """
    per_token = []
    with _deployed(model, autocast) as device:
        for i, prompt in enumerate([prompts[0], *prompts]):  # the first run warms up
            # the warm-up needs a prefill and a decode step (kernels, allocator, autocast's
            # weight cache), not a whole answer
            tokens = new_tokens if i > 0 else min(new_tokens, WARMUP_TOKENS)
            ids = torch.tensor([prompt], device=device)
            t0 = now(device)
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
            elapsed = now(device) - t0
            if i > 0:
                per_token.append(elapsed * 1e3 / new_tokens)
    return statistics.median(per_token)


@torch.no_grad()
def classify_latency_ms(model: torch.nn.Module, texts: list[list[int]],
                        autocast: torch.dtype | None = None) -> float:
    """Median ms to classify one text (a batch-1 forward of its tokens), after a warm-up."""
    times = []
    with _deployed(model, autocast) as device:
        for i, tokens in enumerate([texts[0], *texts]):  # the first run warms up
            ids = torch.tensor([tokens], device=device)
            t0 = now(device)
            model(ids, torch.ones_like(ids))
            if i > 0:
                times.append((now(device) - t0) * 1e3)
    return statistics.median(times)
