"""The training steps' timings and counts (``StepStats``) and the clock that takes them
(``StepTimer``), phase by phase, without stalling a GPU.

    timer = StepTimer(device, stats, clock)   # clock: perf_counter after a CUDA sync (CPU)
    timer.start(); ...; timer.lap(); forward; timer.lap("fwd"); backward; timer.lap("bwd")
    ...; timer.lap(); optimizer step; timer.stop()          # the rest of the step: "opt"
    timer.flush()                             # before anything reads ``stats``' timings

On CPU each read is ``clock(device)`` and a step is recorded when it stops. On CUDA a read of
the host's clock would have to wait for the GPU (a sync: the GPU then idles while the host
queues the next work), so each read records a CUDA event instead; a step's events are read once
its last one has completed (``Event.query``, which does not wait): at the end of a later step,
whose loss read has waited for the GPU anyway, or at ``flush``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

RECENT_LOSSES = 10  # the training loss reported is the mean of the last this many steps' losses


@dataclass
class StepStats:
    """Timings and counts of the training steps run so far (this process)."""

    fwd_ms: list[float] = field(default_factory=list)
    bwd_ms: list[float] = field(default_factory=list)
    opt_ms: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    # the first step of this process (allocator, kernel choice, autocast's weight cache: not the
    # steady state), counted in tokens and seconds but left out of the throughput
    warm_tokens: int = 0
    warm_seconds: float = 0.0

    def timed(self) -> tuple[int, float]:
        """(tokens, seconds) of the steps after the first: what the throughput is made of (all
        steps when only one ran)."""
        if len(self.step_ms) > 1:
            return self.tokens - self.warm_tokens, self.seconds - self.warm_seconds
        return self.tokens, self.seconds

    def summary(self) -> dict[str, float]:
        """Median step-phase times, tokens/s and the recent training loss."""
        med = {
            k: statistics.median(v) if v else float("nan")
            for k, v in (
                ("fwd_ms", self.fwd_ms),
                ("bwd_ms", self.bwd_ms),
                ("opt_ms", self.opt_ms),
                ("step_ms", self.step_ms),
            )
        }
        tokens, seconds = self.timed()
        med["train_tokens_per_s"] = tokens / seconds if seconds else float("nan")
        recent = self.losses[-RECENT_LOSSES:]
        med["train_loss"] = sum(recent) / len(recent) if recent else float("nan")
        return med


Mark = tuple["str | None", "float | torch.cuda.Event"]  # (the phase it ends, the clock's read)


class StepTimer:
    """The clock of one training step at a time: its phases and its whole, into ``StepStats``
    (see the module docstring). ``clock(device)``: seconds, on CPU."""

    def __init__(self, device: torch.device, stats: StepStats,
                 clock: Callable[[torch.device], float]) -> None:
        self.device, self.stats, self.clock = device, stats, clock
        self.cuda = device.type == "cuda"
        self.marks: list[Mark] = []
        self.tokens_before = 0
        self.pending: list[tuple[list[Mark], int]] = []  # ended steps not recorded: (marks, tokens)

    def _read(self, phase: str | None) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()  # on the current stream: when the GPU gets there, no wait here
            self.marks.append((phase, event))
        else:
            self.marks.append((phase, self.clock(self.device)))

    def start(self) -> None:
        """A step begins: the clock's first read of it; its phases start from zero."""
        self.marks = []
        self._read(None)
        self.tokens_before = self.stats.tokens

    def lap(self, phase: str | None = None) -> None:
        """Read the clock; the time since the last read counts to ``phase`` (None: to none)."""
        self._read(phase)

    def stop(self) -> None:
        """The step ends: the time since the last read is the optimizer's. Recorded now on CPU;
        on CUDA with every earlier step whose events have completed."""
        self._read("opt")
        self.pending.append((self.marks, self.stats.tokens - self.tokens_before))
        self._record(wait=not self.cuda)

    def flush(self) -> StepStats:
        """Record every step that has ended (on CUDA, waiting for the GPU to reach its end);
        the stats."""
        self._record(wait=True)
        return self.stats

    def _record(self, wait: bool) -> None:
        while self.pending:
            marks, tokens = self.pending[0]
            end = marks[-1][1]
            if self.cuda and not (wait or end.query()):
                return  # the GPU has not finished it: a later stop or the flush records it
            if self.cuda:
                end.synchronize()
            self.pending.pop(0)
            self._add(marks, tokens)

    def _seconds(self, a: float | torch.cuda.Event, b: float | torch.cuda.Event) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def _add(self, marks: list[Mark], tokens: int) -> None:
        spent = {"fwd": 0.0, "bwd": 0.0, "opt": 0.0}
        for (_, a), (phase, b) in zip(marks, marks[1:], strict=False):
            if phase is not None:
                spent[phase] += self._seconds(a, b)
        stats, took = self.stats, self._seconds(marks[0][1], marks[-1][1])
        stats.fwd_ms.append(spent["fwd"] * 1e3)
        stats.bwd_ms.append(spent["bwd"] * 1e3)
        stats.opt_ms.append(spent["opt"] * 1e3)
        stats.step_ms.append(took * 1e3)
        stats.seconds += took
        if len(stats.step_ms) == 1:
            stats.warm_tokens, stats.warm_seconds = tokens, took
