"""Why lora_B is stored r-major: one LoRA layer's forward+backward, PEFT's layout vs ours.

    python bench/lora_layer_ops.py

For SmolLM2-135M's projection shapes at 1024 tokens (batch 8 x 128), rank 8, fp32, it times the
gradient GEMM of B in both orientations, and a whole layer's forward+backward (frozen base
``x @ W^T`` plus ``s * B(A(x))``) with B stored (out, r) row-major as PEFT does and r-major as
lora_impl does. Interleaved repeats in one process; medians. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, machine_line  # noqa: E402

N, RANK, SCALE = 1024, 8, 2.0
SHAPES = {
    "q/o_proj": (576, 576),
    "k/v_proj": (576, 192),
    "gate/up_proj": (576, 1536),
    "down_proj": (1536, 576),
}


def timeit(fn, repeats: int = 40) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def layer_step(x, w, a, b, g):
    """A closure running one LoRA layer forward and backward (gradients cleared after)."""

    def run():
        out = F.linear(x, w) + F.linear(F.linear(x, a), b) * SCALE
        out.backward(g)
        x.grad = a.grad = b.grad = None

    return run


def main() -> None:
    """Time every shape and print the markdown table (``--help`` only shows the docstring)."""
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    torch.manual_seed(0)
    print(f"Machine: {machine_line(machine())}\n")
    print(
        "| shape (in -> out) | grad_B as g^T h | as h^T g | layer fwd+bwd, B (out, r) row-major "
        "(PEFT) | B r-major (ours) | saved |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, (fin, fout) in SHAPES.items():
        x = torch.randn(N, fin, requires_grad=True)
        w = torch.randn(fout, fin) * 0.02
        a = torch.randn(RANK, fin, requires_grad=True)
        b_peft = torch.randn(fout, RANK, requires_grad=True)
        b_ours = torch.randn(RANK, fout).t().requires_grad_()
        g, h = torch.randn(N, fout), torch.randn(N, RANK)
        slow = timeit(lambda g=g, h=h: g.t() @ h)
        fast = timeit(lambda g=g, h=h: h.t() @ g)
        peft_ms, ours_ms = [], []
        for _ in range(3):  # interleave to share the machine's drift
            peft_ms.append(timeit(layer_step(x, w, a, b_peft, g), 15))
            ours_ms.append(timeit(layer_step(x, w, a, b_ours, g), 15))
        p, o = statistics.median(peft_ms), statistics.median(ours_ms)
        print(
            f"| {name} ({fin} -> {fout}) | {slow:.2f} ms | {fast:.2f} ms | {p:.2f} ms | "
            f"{o:.2f} ms | {100 * (1 - o / p):.0f}% |"
        )


if __name__ == "__main__":
    main()
