"""``--gpus-per-trial auto``: each trial's share of a GPU, from `make gpu-check`'s measurement.

    gpus = resolve("auto", [hf_config], batch=8, seq_len=512)   # 1/K, or 0, or 1

`make gpu-check` (``bench/gpu_throughput.py``) runs K = 1, 2, 4, ... trials of one configuration
at once on its GPU, as many as the memory estimate fits, and records each K's aggregate tokens/s
in ``<cache>/gpu_share.json`` (the cache root of ``study.trial.models.cache_root``: where
``precision.json`` lies), one entry per GPU name, model shape and batch shape. ``auto`` is 1/K
for the K whose aggregate was highest there; a larger K wins only when it beats the best smaller
one by more than ``MIN_GAIN`` (one measurement's noise): ties go to fewer trials per GPU, which
each run faster and hold more memory. Without CUDA ``auto`` is 0; with CUDA but no measurement
for this GPU and model (a missing or damaged file, another GPU's) it is 1, said in one line on
stderr that names `make gpu-check`. The study's largest batch shape is looked up; where that
shape was not measured, the measurement of the smallest larger batch is used (its K fitted that
batch's memory); a study that can run several models takes the smallest share of theirs.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from study.files import RecordError, read_object, write_json
from study.search.options import AUTO
from study.trial.models import cache_root

FILE = "gpu_share.json"
MIN_GAIN = 0.02  # a larger K must beat the best smaller one by more than this (relative)
# the config attributes that make a model's shape (transformers' names; GPT-2's own as well)
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size", "n_inner")


class DamagedCache(ValueError):
    """The measurement file does not parse as one: the message names it."""


def cache_file() -> Path:
    """Where the measurement is kept: ``<cache>/gpu_share.json``."""
    return cache_root() / FILE


def model_key(hf_config) -> str:
    """A model's shape as one string (a randomly initialised model of a config is keyed as the
    trained one of that config: only the shape decides how many trials share a GPU well)."""
    parts = [f"{name}={getattr(hf_config, name)}" for name in SHAPE_FIELDS
             if getattr(hf_config, name, None) is not None]
    return " ".join(parts)


def entry_key(gpu: str, model: str, batch: int, seq_len: int) -> str:
    """The key of one measurement in the file."""
    return json.dumps([gpu, model, batch, seq_len])


def best_k(tokens_per_s: Mapping[int, float]) -> int:
    """The K of the highest aggregate tokens/s; a larger K only when it beats the best smaller
    one by more than ``MIN_GAIN`` (ties, near ties included, go to the smaller K)."""
    best = None
    for k in sorted(tokens_per_s):
        if best is None or tokens_per_s[k] > tokens_per_s[best] * (1 + MIN_GAIN):
            best = k
    if best is None:
        raise ValueError("no measurement to choose from")
    return best


def _valid(entry) -> dict[int, float] | None:
    """An entry's {K: aggregate tokens/s}, or None when it is not a measurement."""
    if not isinstance(entry, dict) or not isinstance(entry.get("tokens_per_s"), dict):
        return None
    if not (isinstance(entry.get("gpu"), str) and isinstance(entry.get("model"), str)
            and all(_count(entry.get(k)) for k in ("batch", "seq_len"))):
        return None
    out = {}
    for k, value in entry["tokens_per_s"].items():
        if not (str(k).isdigit() and int(k) >= 1 and _number(value) and value > 0):
            return None
        out[int(k)] = float(value)
    return out or None


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_measurements(path: Path) -> dict[str, dict]:
    """The file's measurements by key (none when it is missing; an entry that is not one is
    left out). Raises DamagedCache, naming the file, when it does not parse as a JSON object."""
    if not path.exists():
        return {}
    try:
        data = read_object(path)
    except RecordError as err:
        raise DamagedCache(f"{path} is damaged ({err.problem})") from None
    valid = {k: _valid(v) for k, v in data.items()}
    return {k: {**data[k], "tokens_per_s": rates} for k, rates in valid.items() if rates}


def write_measurement(path: Path, gpu: str, model: str, batch: int, seq_len: int,
                      tokens_per_s: Mapping[int, float], **details) -> None:
    """Record one measurement (``tokens_per_s``: K -> aggregate tokens/s), replacing an earlier
    one of the same key; a damaged file is replaced."""
    try:
        data = read_object(path) if path.exists() else {}
    except RecordError:
        data = {}
    entry = {"gpu": gpu, "model": model, "batch": batch, "seq_len": seq_len,
             "tokens_per_s": {str(k): v for k, v in sorted(tokens_per_s.items())}, **details}
    write_json(path, {**data, entry_key(gpu, model, batch, seq_len): entry})


def lookup(measurements: Mapping[str, dict], gpu: str, model: str, batch: int,
           seq_len: int) -> dict | None:
    """The measurement for this GPU, model and batch shape: that shape's, else the one of the
    fewest tokens per batch at least as many as this one's (its K fitted more memory); None."""
    if exact := measurements.get(entry_key(gpu, model, batch, seq_len)):
        return exact
    larger = [m for m in measurements.values()
              if m["gpu"] == gpu and m["model"] == model and m["batch"] * m["seq_len"]
              >= batch * seq_len]
    return min(larger, key=lambda m: m["batch"] * m["seq_len"], default=None)


def cuda_device() -> str | None:
    """The name of this machine's first GPU, None without CUDA."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _fallback(reason: str, path: Path) -> float:
    print(f"study.tune: --gpus-per-trial auto: {reason}; using 1 GPU per trial (run `make "
          f"gpu-check` on this machine to measure how many trials share it best, into {path})",
          file=sys.stderr)
    return 1.0


def choose(gpu: str, models: Iterable, batch: int, seq_len: int, path: Path) -> float:
    """``auto`` on a machine whose GPU is ``gpu``: 1/K from the measurement in ``path`` (the
    smallest share over the study's models), or 1 with a line on stderr."""
    try:
        measurements = read_measurements(path)
    except DamagedCache as err:
        return _fallback(f"{err}, skipped", path)
    chosen = []
    for hf_config in models:
        found = lookup(measurements, gpu, model_key(hf_config), batch, seq_len)
        if found is None:
            return _fallback(f"no measurement for {gpu}, {model_key(hf_config)}, batch {batch} "
                             f"x {seq_len} or larger", path)
        chosen.append((best_k(found["tokens_per_s"]), found))
    k, found = min(chosen, key=lambda c: c[0])
    rates = found["tokens_per_s"]
    print(f"study.tune: --gpus-per-trial auto: {1 / k:g} ({k} trials per {gpu}: "
          f"{rates[k]:,.0f} tokens/s together against {rates[min(rates)]:,.0f} for "
          f"{min(rates)}, measured at batch {found['batch']} x {found['seq_len']} in {path})")
    return 1.0 / k


def resolve(value: float | str | None, models: Iterable, batch: int, seq_len: int,
            path: Path | None = None) -> float:
    """``--gpus-per-trial`` as a number: as given; unset: 1 with CUDA, else 0; ``auto``: 0
    without CUDA, else :func:`choose` for this machine's GPU, the study's models and its
    largest batch shape (``batch`` rows of ``seq_len`` tokens)."""
    if value is None:
        import torch

        return float(torch.cuda.is_available())
    if value != AUTO:
        return float(value)
    gpu = cuda_device()
    if gpu is None:
        return 0.0
    return choose(gpu, list(models), batch, seq_len, path or cache_file())
