"""One attempt at a study's trial, without Ray: resume or re-report, guards, faults, failures.

    run(config, trial_dir, max_mem_mb, report)   # report(metrics) after every evaluation

``study.search.trainable`` calls it in a Ray worker, or in a process forked for the trial
(``study.forkserver``); either way ``report`` hands each metrics dict to Tune.

Errors that retrying cannot fix (a diverged loss, a failed allocation on CPU or GPU, the memory
budget, and every error that is not a runtime or I/O error) end the trial with a final
``{"error": reason}`` report: the study marks it errored, Optuna is told FAIL, and the other
trials go on. A runtime or I/O error propagates, and Ray retries the trial (``--max-failures``),
which resumes from the last checkpoint in its trial directory.

``LORA_STUDY_FAULT`` injects faults for testing the study's fault handling, once per trial:
``transient@STEP`` (a RuntimeError after STEP, retried by Ray), ``nan@STEP`` (the error the
training loop raises on a NaN loss), ``oom@STEP`` (torch.OutOfMemoryError), ``cpu-oom@STEP``
(a real allocation of 32 TiB, which the CPU allocator refuses), ``bug@STEP`` (a ValueError:
not retried);
``KIND@STEP@KEY=VALUE`` limits it to trials whose config has that value (dotted key); several
specs are separated by commas.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from study import metrics as M
from study import record
from study.config import TrialConfig
from study.search.replicates import split
from study.trial.checkpoint import find_checkpoint
from study.trial.resources import rss_peak_mb
from study.trial.run import run_trial
from study.trial.train import NonFiniteLossError


class MemoryBudgetExceeded(RuntimeError):
    """The trial's memory went over --max-mem-mb."""


def _memory_guard(limit_mb: float):
    # The peak of the training phase so far (what the trial's peak_mem_mb reports), not the
    # current size: after a step its activations are freed, and the current RSS misses them.
    def check(step: int, _loss: float) -> None:
        cuda = torch.cuda.is_available()
        used = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_peak_mb()
        if used > limit_mb:
            raise MemoryBudgetExceeded(
                f"memory {used:.0f} MB exceeds --max-mem-mb {limit_mb:.0f} at step {step}"
            )

    return check


def _faults(trial_dir: Path, cfg: TrialConfig) -> list:
    """Callbacks for the LORA_STUDY_FAULT specs (comma-separated) that apply to this trial."""
    values = cfg.to_flat()
    out = []
    for spec in filter(None, os.environ.get("LORA_STUDY_FAULT", "").split(",")):
        kind, _, rest = spec.strip().partition("@")
        at, _, condition = rest.partition("@")
        key, _, value = condition.partition("=")
        if condition and str(values.get(key)) != value:
            continue
        out.append(_fault(kind, int(at), trial_dir / f".fault-{kind}"))
    return out


def _fault(kind: str, at: int, marker: Path):
    def inject(step: int, _loss: float) -> None:
        if step != at or marker.exists():
            return
        marker.write_text("injected")  # once per trial: a retry runs clean
        if kind == "transient":
            raise RuntimeError(f"injected transient fault at step {step}")
        if kind == "oom":
            raise torch.OutOfMemoryError(f"injected out-of-memory at step {step}")
        if kind == "cpu-oom":  # a real allocation the CPU allocator refuses (32 TiB)
            torch.empty(1 << 45, dtype=torch.uint8)
        if kind == "bug":  # an error that is the same on every try
            raise ValueError(f"injected non-transient fault at step {step}")
        if kind == "nan":  # what train_loop raises on a NaN loss (tested there on its own)
            raise NonFiniteLossError(
                f"non-finite training loss (nan, injected) at step {step}", step=step
            )
        raise ValueError(f"LORA_STUDY_FAULT: unknown fault kind {kind!r}")

    return inject


def trial_config(config: dict) -> TrialConfig:
    """Tune's config: dotted keys (``lora.rank``), or a baseline as ``{"baseline": {...}}``;
    the study's identity of the trial (``record.CONFIG_ID``, ``record.REPLICATE``) is left out:
    the study records it, the trial does not depend on it."""
    return TrialConfig.from_dict(split(config)[0])


def _final_metrics(trial_dir: Path) -> dict | None:
    """The trial's final metrics if it ran to its end already, else None: the study said so,
    or its last metrics are final (a kill or a lost worker came after the final report,
    before the study wrote it).

    Evaluating again from the final checkpoint would train nothing and so measure no peak
    memory or speed; the recorded final metrics are the trial's result. (Metrics of older
    versions lack the marker: status.json decides for them.)
    """
    if record.read_status(trial_dir).get("status") == record.FINISHED:
        return {**record.read_metrics(trial_dir), record.FINAL: True}
    try:
        metrics = record.read_metrics(trial_dir) if record.has_metrics(trial_dir) else {}
    except record.RecordError:
        return None  # damaged: run the trial again from its checkpoint
    return metrics if record.is_final(metrics) else None


def share_gpu(fraction: float | None) -> bool:
    """Cap this process at ``fraction`` of its GPU's memory when trials share a card (Ray's
    fractional ``--gpus-per-trial``), so one trial cannot push the others out of memory; True
    when a cap was set."""
    if not fraction or fraction >= 1 or not torch.cuda.is_available():
        return False
    torch.cuda.set_per_process_memory_fraction(fraction)
    return True


def run(
    config: dict,
    trial_dir: Path,
    max_mem_mb: float | None,
    report: Callable[[dict], None],
    gpu_share: float | None = None,
) -> None:
    """Run (or resume) the trial of ``config`` in ``trial_dir``, calling ``report(metrics)``
    after every evaluation; a trial that ended before is reported again, not retrained.

    ``gpu_share`` (0-1): the share of a GPU this trial has (``share_gpu``); an allocation that
    fails inside it is reported as ``record.SHARED_GPU_OOM`` (the configuration may fit a whole
    card).

    The trial directory is named by the study (a trial resumed after a kill keeps its
    directory), and the trial resumes from the checkpoint there when one exists: a retry after a
    crash (``--max-failures``) or a ``--resume``. Ray keeps no checkpoint of its own.
    """
    cfg = trial_config(config)
    final = _final_metrics(trial_dir)
    if final is not None:  # it ran to its end before a crash: report it again, don't retrain
        report(final)
        return
    callbacks = []
    if max_mem_mb:
        callbacks.append(_memory_guard(max_mem_mb))
    callbacks += _faults(trial_dir, cfg)
    last = {"step": 0}

    def track(step: int, _loss: float) -> None:
        last["step"] = step

    callbacks.insert(0, track)
    shared = share_gpu(gpu_share)
    try:
        run_trial(
            cfg,
            report=lambda metrics, _checkpoint_dir: report(metrics),  # checkpoint: in trial_dir
            resume_from=find_checkpoint(record.checkpoint_dir(trial_dir)),
            out_dir=trial_dir,
            callbacks=tuple(callbacks),
        )
    except Exception as err:
        oom = out_of_memory(err)
        ours = isinstance(err, (NonFiniteLossError, MemoryBudgetExceeded))
        if not (oom or ours) and transient(err):
            raise  # Ray retries the trial from its checkpoint (--max-failures)
        if oom:
            reason = f"{record.SHARED_GPU_OOM if shared else 'out of memory'}: {err}"
        else:
            reason = str(err) if ours else f"{_kind(err)}: {err}"
        step = getattr(err, "step", None) or last["step"]  # a NaN names its own step
        report({"error": reason, M.STEP: step})


def transient(err: BaseException) -> bool:
    """Whether a retry may succeed: a runtime or I/O error (a lost device, a full disk, a
    network file system) may; a ValueError, TypeError, KeyError... is the same on every try."""
    return isinstance(err, (RuntimeError, OSError)) and not isinstance(err, NotImplementedError)


def _kind(err: BaseException) -> str:
    return type(err).__name__


def out_of_memory(err: BaseException) -> bool:
    """Whether an error is a failed memory allocation (CUDA, or the CPU allocator), which a
    retry would only repeat."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text
    )
