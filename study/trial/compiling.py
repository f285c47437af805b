"""``train.compile``: torch.compile of the training step's decoder layers, ``auto`` measured.

    compiled = choose(cfg, model, examples, pad_id, device, amp, "fp32")
    train_loop(..., loss_fn=compiled.loss_fn)   # batch_loss, or it through a compiled view

What compiles is the model's repeated blocks, each on its own (``study.trial.regions``: one
layer's compile serves every layer, where the whole model's took 302 s on 2 CPU cores), in a
view only the training loss calls; the output head, the chunked loss and evaluation stay eager.

``on`` always compiles, ``off`` never. ``auto`` decides from timings of the trial's own model on
its own first micro-batches (forward + loss + backward, under the trial's autocast, after a
warm-up pass), never from a belief about what compile does:

1. the eager step is timed (``eager_ms`` per micro-batch: a warm-up pass, then two or three
   timed passes over the first ``MEASURE_BATCHES`` micro-batches);
2. if the planned training at that speed (``micro_steps`` x ``eager_ms``) takes no longer than
   every compile of this model measured here for other workloads (``model_bound``), or than
   compiling the smallest graph here (``floor_s``: a one-op forward and backward compiled, the
   compiler's imports included, timed once per machine and torch version), no compile can
   repay itself: eager, nothing more measured;
3. else the model's blocks are compiled (``compile_s``: the first compiled pass) and timed
   (``compiled_ms``); compiled is chosen only where it is faster by more than ``TIE`` *and* the
   time it saves over the planned micro-batches exceeds ``compile_s``.

Every figure is cached in ``<cache>/compile.json`` (``study.trial.models.cache_root``), keyed by
the device (CPU or GPU name), torch version, thread count, model, method, quantization, task,
batch size, batching, sequence length, compute dtype and gradient checkpointing (not rank or
targets: the base model's compute dominates a step). So a machine pays steps 2 and 3 once per
such key, and a trial's verdict is the same whether it measured or read the cache (the rule of
step 3 always counts the compile). A trial with a cached "compile" verdict compiles again
(timed: ``compile_s`` of its metrics); a measuring trial trains with the graphs it measured.
The verdict counts the whole trial's planned steps, also when it resumes part-way.

``LORA_STUDY_COMPILE_AUTO=off`` in the environment makes ``auto`` measure nothing and keep eager
(recorded as the reason): the test suite sets it, as a cold compile of even a tiny model takes
tens of seconds on 2 cores. Batches vary in length: the blocks are compiled with ``dynamic=True``,
so a new length does not recompile. Compiled dropout draws other random numbers than eager.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from study.config import TrialConfig
from study.trial.batches import Batcher
from study.trial.compile_cache import cache_key, model_bound, read_cache, store, workload
from study.trial.data import Example
from study.trial.models.bundled import cache_root
from study.trial.regions import compiled_view
from study.trial.resources import now
from study.trial.train import batch_loss, to_device, total_steps  # the loop's own batches

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
TIE = 0.05  # compiled must be more than 5% faster per micro-batch: eager is the simpler program
MEASURE_BATCHES = 2  # the trial's first micro-batches (two lengths: a dynamic graph is checked)
PASSES, BUDGET_S = 3, 5.0  # timed passes over them (at least 2; a third while under budget)
ENV_AUTO = "LORA_STUDY_COMPILE_AUTO"


@dataclass(frozen=True)
class Choice:
    """A resolved ``train.compile``: ``chosen`` is on or off, ``reason`` says why; for ``auto``
    the figures behind it (ms per micro-batch, compile seconds), whether they all came from the
    cache, and ``measure_s``: what deciding cost this process (timed steps and compiles)."""

    asked: str
    chosen: str
    reason: str
    cached: bool = False
    eager_ms: float | None = None
    compiled_ms: float | None = None
    compile_s: float | None = None
    floor_s: float | None = None
    micro_steps: int | None = None
    measure_s: float = 0.0

    def record(self) -> dict:
        """What env.json keeps of the choice (its ``compile`` key)."""
        return asdict(self)


@dataclass(frozen=True)
class Compiled:
    """What a trial trains with: the loss function the loop calls, the choice behind it, and
    the seconds this process spent compiling (the ``compile_s`` metric)."""

    choice: Choice
    loss_fn: LossFn
    compile_s: float = 0.0


def decide(micro_steps: int, eager_ms: float, compiled_ms: float,
           compile_s: float) -> tuple[bool, str]:
    """Whether to compile, and why: faster by more than ``TIE`` and repaid in the planned steps."""
    saved = micro_steps * (eager_ms - compiled_ms) / 1e3
    per = f"compiled {compiled_ms:.4g} ms vs eager {eager_ms:.4g} ms per micro-batch"
    if compiled_ms >= eager_ms * (1 - TIE):
        return False, f"{per}: not faster by more than {TIE:.0%}"
    repaid = saved > compile_s
    return repaid, (f"{per} saves {saved:.3g} s over the planned {micro_steps} micro-batches, "
                    f"{'more' if repaid else 'less'} than the {compile_s:.3g} s compile")


SMALLEST = "compiling the smallest graph here"
MODEL = "every compile of this model measured here (for other workloads)"


def too_short(micro_steps: int, eager_ms: float, bound_s: float,
              bound: str = SMALLEST) -> str | None:
    """Why no compile can repay itself (the whole planned eager training takes no longer than
    ``bound_s``, a compile time measured here: ``bound`` says which), or None when one might."""
    eager_s = micro_steps * eager_ms / 1e3
    if eager_s > bound_s:
        return None
    return (f"the planned {micro_steps} micro-batches take {eager_s:.3g} s eager, no longer than "
            f"{bound} ({bound_s:.3g} s): no compile can repay itself")


def view_loss(view: nn.Module, loss: LossFn) -> LossFn:
    """``loss`` computed through ``view`` (a compiled view sharing the trained model's weights)
    in the mode of the model the loop passes (the view's own containers copied the mode the
    model had when the view was made)."""
    def fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if view.training != model.training:
            view.train(model.training)
        return loss(view, batch)
    return fn


def _smallest(x: torch.Tensor) -> torch.Tensor:
    return (x * 2).sin().sum()


class Probe:
    """The measurements ``auto`` decides by, on the trial's model and first micro-batches, in
    training mode and under its autocast; random state and gradients are left as found."""

    def __init__(self, model: nn.Module, batches: list[dict[str, torch.Tensor]],
                 device: torch.device, amp: torch.dtype | None, loss: LossFn = batch_loss) -> None:
        self.model, self.batches, self.device = model, batches, device
        self.amp, self.loss = amp, loss

    def _pass(self, fn: LossFn) -> float:
        """Seconds of forward + loss + backward over every batch (gradients dropped after)."""
        rng = [self.device] if self.device.type == "cuda" else []
        was_training = self.model.training
        self.model.train()
        try:
            with torch.random.fork_rng(devices=rng, device_type=self.device.type):
                start = now(self.device)
                for batch in self.batches:
                    with torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                                        enabled=self.amp is not None):
                        loss = fn(self.model, batch)
                    loss.backward()
                took = now(self.device) - start
        finally:
            for p in self.model.parameters():
                p.grad = None
            self.model.train(was_training)
        return took

    def step_ms(self, fn: LossFn, warm_up: bool = True) -> float:
        """Median ms per micro-batch of ``fn`` over timed passes (after an untimed one)."""
        if warm_up:
            self._pass(fn)
        times, start = [], time.perf_counter()
        while len(times) < 2 or (len(times) < PASSES and time.perf_counter() - start < BUDGET_S):
            times.append(self._pass(fn))
        return statistics.median(times) / len(self.batches) * 1e3

    def eager_ms(self) -> float:
        """ms per micro-batch of the eager loss."""
        return self.step_ms(self.loss)

    def compile(self) -> tuple[LossFn, float]:
        """The loss through the model's compiled view (its repeated blocks compiled with
        ``dynamic=True``: ``study.trial.regions``) and the seconds of its first pass (the
        compile)."""
        torch.compiler.reset()  # a fresh start: no other model's graphs count to its limits
        fn = view_loss(compiled_view(self.model, dynamic=True), self.loss)
        return fn, self._pass(fn)

    def floor_s(self) -> float:
        """Seconds to compile and run the smallest graph (one op, forward and backward) here,
        the compiler's imports included where this process has not made them yet."""
        start = now(self.device)
        torch.compiler.reset()
        fn = torch.compile(_smallest, dynamic=True)
        fn(torch.randn(8, device=self.device, requires_grad=True)).backward()
        return now(self.device) - start


def choose(cfg: TrialConfig, model: nn.Module, examples: list[Example], pad_id: int,
           device: torch.device, amp: torch.dtype | None, dtype: str,
           cache_file: Path | None = None) -> Compiled:
    """``cfg.train.compile`` resolved for a trial: measured (``auto``) on its model, its first
    ``MEASURE_BATCHES`` micro-batches and its planned micro-batches (the module's rule)."""
    if cfg.method == "base":
        return Compiled(Choice(cfg.train.compile, "off", "method base: nothing trains"), batch_loss)
    batcher = Batcher(examples, cfg.train.batch_size, cfg.seed, pad_id, cfg.train.batching)
    batches = [to_device(batcher.micro_batch(k), device)[0] for k in range(MEASURE_BATCHES)]
    micro_steps = total_steps(cfg.train, len(examples)) * cfg.train.grad_accum
    probe = Probe(model, batches, device, amp)
    key = cache_key(device, *workload(cfg, dtype))
    return resolve(cfg.train.compile, probe, key, cache_key(device, "floor"), micro_steps,
                   cache_file)


def resolve(asked: str, probe: Probe, key: str, floor_key: str, micro_steps: int,
            cache_file: Path | None = None) -> Compiled:
    """``train.compile=asked``: ``on`` compiles, ``off`` does not, ``auto`` measures with
    ``probe`` (or reads ``cache_file``, default ``<cache>/compile.json``) and decides.

    Raises:
        RuntimeError: ``on`` where torch.compile fails.
        ValueError: a bad ``$LORA_STUDY_COMPILE_AUTO``.
    """
    if asked == "off":
        return Compiled(Choice(asked, "off", "train.compile off"), probe.loss)
    if asked == "on":
        fn, took, error = _try_compile(probe)
        if error:
            raise RuntimeError(f"train.compile on: torch.compile failed here: {error}")
        return Compiled(Choice(asked, "on", "train.compile on", compile_s=took), fn, took)
    setting = os.environ.get(ENV_AUTO, "")
    if setting not in ("", "off"):
        raise ValueError(f"${ENV_AUTO} must be off or unset, got {setting!r}")
    if setting == "off":
        return Compiled(Choice(asked, "off", f"${ENV_AUTO}=off: auto measured nothing"),
                        probe.loss)
    return _auto(probe, key, floor_key, micro_steps, cache_file or cache_root() / "compile.json")


def _auto(probe: Probe, key: str, floor_key: str, micro_steps: int,
          cache_file: Path) -> Compiled:
    """``auto``: the cached or measured figures, the verdict, the loss to train with."""
    started = time.perf_counter()
    cache = read_cache(cache_file)
    entry, floor = dict(cache.get(key, {})), cache.get(floor_key, {}).get("floor_s")
    cached, fn, spent, why = True, None, 0.0, None
    if "eager_ms" not in entry:
        entry["eager_ms"], cached = round(probe.eager_ms(), 4), False
    if "compile_s" not in entry and "error" not in entry:
        why = too_short(micro_steps, entry["eager_ms"], model_bound(cache, key), MODEL)
        if why is None and floor is None:
            floor = round(probe.floor_s(), 3)
            spent, cached = floor, False
            store(cache_file, floor_key, {"floor_s": floor})
        if why is None:
            why = too_short(micro_steps, entry["eager_ms"], floor)
        if why is None:
            fn, took, error = _try_compile(probe, timed=True, entry=entry)
            spent, cached = spent + took, False
            if error:
                entry["error"] = error
        store(cache_file, key, entry)
    on = False
    if why is None and "error" in entry:
        why = f"torch.compile failed here: {entry['error']}"
    elif why is None:
        on, why = decide(micro_steps, entry["eager_ms"], entry["compiled_ms"], entry["compile_s"])
    figures = {k: entry.get(k) for k in ("eager_ms", "compiled_ms", "compile_s")}
    measure_s = round(time.perf_counter() - started, 3)
    if on and fn is None:  # the verdict came from the cache: compile for this process
        fn, took, error = _try_compile(probe)
        spent += took
        if error:
            on, why = False, f"torch.compile failed here: {error}"
    if not on and fn is not None:
        torch.compiler.reset()  # the measured graphs are not used: let them go
    choice = Choice("auto", "on" if on else "off", why, cached, floor_s=floor,
                    micro_steps=micro_steps, measure_s=measure_s, **figures)
    return Compiled(choice, fn if on else probe.loss, round(spent, 3))


def _try_compile(probe: Probe, timed: bool = False,
                 entry: dict | None = None) -> tuple[LossFn | None, float, str | None]:
    """(the compiled loss, the seconds its compile took, None), or (None, seconds, the error's
    first line) where torch.compile fails here; ``timed``: its step time into ``entry`` too."""
    start = time.perf_counter()
    try:
        fn, took = probe.compile()
        if timed and entry is not None:
            step_ms = probe.step_ms(fn, warm_up=False)
            entry.update(compile_s=round(took, 3), compiled_ms=round(step_ms, 4))
    except Exception as err:  # any failure of the compiler (dynamo, inductor, gcc): train eager
        lines = str(err).strip().splitlines() or [type(err).__name__]
        return None, round(time.perf_counter() - start, 3), f"{type(err).__name__}: {lines[0]}"
    return fn, round(took, 3), None
