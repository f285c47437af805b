"""DPO's reference without a second model: the starting model's log-probabilities, computed once.

    logps = reference_for(model, data, pad_id, amp, trial_dir, splits)   # read back on resume
    attach(data, logps)        # each example's ref_logps: what pair_batch hands the loss

``dpo.reference=cached`` (the default, measured: docs/BENCHMARKS.md): before the first step
the trial scores every pair's two responses with the model as it starts (the base with a fresh
adapter, whose B is zero; or the adapter of ``lora.init_from``), so no frozen copy is kept and
the reference costs one forward pass per pair and split, not one per step. The trial writes them
to its ``reference.json`` (``study.record``) before training; a resumed trial reads them back,
and where that file is missing, damaged or does not fit, computes them again from the model it
has just built, which is still the starting one (the checkpoint is restored after this).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from study import record
from study.trial.data import Example, TaskData
from study.trial.dpo import PAIRS_PER_BATCH, pair_batches, sequence_logps


@torch.no_grad()
def score(model: nn.Module, examples: list[Example], pad_id: int,
          amp: torch.dtype | None) -> list[list[float]]:
    """[[chosen log-prob, rejected log-prob], ...] of ``examples`` under ``model`` (eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    try:
        for batch in pair_batches(examples, pad_id, device, PAIRS_PER_BATCH):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                batch.pop("ref_logps", None)  # the model's own, not an earlier cache's
                logps = sequence_logps(model, batch)[0]
            chosen, rejected = logps.double().chunk(2)
            out += [[c, r] for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)]
    finally:
        model.train(was_training)
    return out


def _recorded(trial_dir: Path, data: TaskData, splits: tuple[str, ...]) -> dict | None:
    """The trial's reference.json where it fits ``data`` (every split, every pair), else None
    (a damaged or stale file is named on stderr)."""
    try:
        logps = record.read_reference(trial_dir)
    except record.RecordError as err:
        warnings.warn(f"{err}: the reference is computed again", stacklevel=2)
        return None
    fits = logps is not None and all(
        isinstance(logps.get(s), list) and len(logps[s]) == len(getattr(data, s))
        and all(isinstance(p, list) and len(p) == 2 for p in logps[s]) for s in splits)
    if logps is not None and not fits:
        warnings.warn(f"{Path(trial_dir) / record.REFERENCE} does not fit the trial's data: the "
                      "reference is computed again", stacklevel=2)
    return logps if fits else None


def reference_for(model: nn.Module, data: TaskData, pad_id: int, amp: torch.dtype | None,
                  trial_dir: Path | None, splits: tuple[str, ...]) -> tuple[dict, bool]:
    """(split -> the starting model's [[chosen, rejected], ...], whether it was computed here
    rather than read from ``trial_dir``'s reference.json)."""
    if trial_dir is not None and (logps := _recorded(trial_dir, data, splits)) is not None:
        return {s: logps[s] for s in splits}, False
    return {s: score(model, getattr(data, s), pad_id, amp) for s in splits}, True


def attach(data: TaskData, logps: dict[str, list[list[float]]]) -> None:
    """Each example of the splits in ``logps`` carries its reference log-probabilities."""
    for split, values in logps.items():
        for example, pair in zip(getattr(data, split), values, strict=True):
            example.ref_logps = pair
