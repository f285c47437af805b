"""``<cache>/compile.json``: what ``train.compile=auto`` measured, per machine and workload.

    key = cache_key(device, *workload(cfg, "fp32"))  # the machine, torch, the trial's shape
    entry = read_cache(path).get(key, {})            # eager_ms, compiled_ms, compile_s, error
    store(path, key, entry)

An entry is measured once per key and read by every later trial (``study.trial.compiling``); a
damaged file or entry is measured again, an unwritable cache only means measuring again.
"""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path

import torch

from study.config import TrialConfig
from study.record import write_json
from study.trial.environment import cpu_name

NUMBERS = ("eager_ms", "compiled_ms", "compile_s", "floor_s")


# What train.compile compiles: the decoder blocks (study.trial.regions). In every key, as figures
# measured for another unit (the whole loss, before) say nothing of this one's compile.
COMPILES = "blocks"
SAME_MACHINE = 5  # the leading parts of a key: device, its name, architecture, torch, COMPILES
MODEL_AT = SAME_MACHINE + 1  # after the thread count: workload's model


def cache_key(device: torch.device, *what) -> str:
    """A key of ``compile.json``: the machine (device, its name, architecture), torch, what
    compiles (``COMPILES``), ``what``."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return json.dumps([device.type, where, platform.machine(), torch.__version__, COMPILES,
                       *what])


def workload(cfg: TrialConfig, dtype: str) -> list:
    """What of a trial its verdict is keyed by besides the machine (``dtype``: the resolved
    compute precision, fp32, bf16 or fp16)."""
    return [torch.get_num_threads(), cfg.model.name, cfg.method, cfg.quant.name, cfg.data.task,
            cfg.train.batch_size, cfg.train.batching, cfg.data.seq_len, dtype,
            cfg.train.grad_checkpointing]


def model_bound(cache: dict, key: str) -> float:
    """The shortest compile of ``key``'s model on ``key``'s machine and torch measured for
    another workload (``workload``: another method, quantization, batch, ...) in ``cache``; 0
    where there is none."""
    def parts(k: str) -> list:
        try:
            out = json.loads(k)
        except ValueError:
            return []
        return out if isinstance(out, list) and len(out) > MODEL_AT else []

    mine = parts(key)
    same = [v["compile_s"] for k, v in cache.items()
            if k != key and "compile_s" in v and mine and (o := parts(k))
            and o[:SAME_MACHINE] == mine[:SAME_MACHINE] and o[MODEL_AT] == mine[MODEL_AT]]
    return min(same, default=0.0)


def store(cache_file: Path, key: str, entry: dict) -> None:
    with contextlib.suppress(OSError):  # an unwritable cache only means measuring again
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache_file, {**read_cache(cache_file), key: entry})


def _valid(entry) -> bool:
    """A cache entry as ``_auto`` writes it: a floor, or eager ms (and compiled ms and compile
    seconds together), numbers > 0; anything else is measured again."""
    if not isinstance(entry, dict) or not ("eager_ms" in entry or "floor_s" in entry):
        return False
    if ("compile_s" in entry) != ("compiled_ms" in entry):
        return False
    return all(isinstance(v, str) if k == "error" else (
        k in NUMBERS and isinstance(v, (int, float)) and not isinstance(v, bool)
        and 0 < v < float("inf")) for k, v in entry.items())


def read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: measured again and rewritten
        return {}
    return {k: v for k, v in data.items() if _valid(v)} if isinstance(data, dict) else {}
