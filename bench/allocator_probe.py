"""The resident peak after each of a few training steps, under one glibc malloc setting.

    python bench/allocator_probe.py --bits 8                       # glibc as started
    python bench/allocator_probe.py --bits 16 --mmap-threshold 1048576

The bundled model (``--bits`` 16, 8 or 4), LoRA qkvo r4, a batch of 8 x 60 random tokens, plain
forward and backward (no optimizer): after each step the resident size and the high-water mark
(VmHWM, reset once before the first step), then what ``malloc_trim(0)`` hands back. Run each
setting in a process of its own (mallopt is per process, the high-water mark too).
docs/BENCHMARKS.md ("The gate's error band, and what glibc keeps") has its figures.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bits", type=int, choices=(4, 8, 16), default=16)
    parser.add_argument("--mmap-threshold", type=int, help="bytes (mallopt M_MMAP_THRESHOLD)")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    libc = ctypes.CDLL("libc.so.6")
    if args.mmap_threshold and libc.mallopt(-3, args.mmap_threshold) != 1:  # M_MMAP_THRESHOLD
        raise SystemExit("mallopt failed")
    import torch

    from lora_impl import inject_lora
    from study.config import TrialConfig
    from study.trial.models import load_model
    from study.trial.resources import rss_mb, rss_peak_mb

    quant = TrialConfig.from_dict({"quant.bits": args.bits}).quant
    model, _ = load_model("smollm2-135m", quant=quant if args.bits != 16 else None)
    inject_lora(model, "qkvo", rank=4, alpha=4.0)
    print(f"loaded: {rss_mb():.0f} MB resident")
    ids = torch.randint(1, 1000, (8, 60), generator=torch.Generator().manual_seed(0))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for step in range(1, args.steps + 1):
        model(input_ids=ids, labels=ids).loss.backward()
        print(f"step {step}: {rss_mb():.0f} MB resident, peak {rss_peak_mb():.0f} MB")
    libc.malloc_trim(0)
    print(f"after malloc_trim(0): {rss_mb():.0f} MB resident")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
