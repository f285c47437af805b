"""torch.profiler over a few training steps: gpu-check's Qwen2-0.5B-shaped probe and our loop.

    python bench/profile_step.py                 # CUDA where present; no CUDA: the dry run
    python bench/profile_step.py --dry-run       # the CPU, a tiny Qwen2 at batch 2 x 32
    python bench/profile_step.py --tiny          # the tiny shapes on CUDA (launch-bound)
    python bench/profile_step.py --trace DIR     # also each target's Chrome trace (perfetto)

The model is `make gpu-check`'s throughput probe (``bench/qwen2_probe.py``): a randomly initialised
model of Qwen2-0.5B's config (no download), LoRA r8 on every linear layer, batches of 8 x 512
tokens, bf16 storage and autocast on CUDA (fp32 on the CPU). Two targets, a fresh model each:

(a) the probe: forward, loss, backward and AdamW written out (what gpu_check times);
(b) our trial's loop: ``study.trial.train.train_loop`` on examples of the same shape, with the
    trial's optimizer (``make_optimizer``), learning-rate schedule, gradient clipping, collation
    and step timer (what a trial runs; the difference from (a) is the loop's own cost).

For each, after ``--warm`` steps, ``--steps`` steps are profiled and printed: the top ops by
self time on the GPU (the kernels each op launched) and on the CPU, the share of each in
matmuls, attention, the loss, the optimizer (AdamW, clipping's norms) and elementwise ops
(norms, activations, casts, copies), and the kernel launches per step (CPU: the ops per step).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, schedule  # noqa: E402

from bench import qwen2_probe  # noqa: E402

# an op's category by the first of these its name contains (lower case), checked in this order
CATEGORIES = (
    ("attention", ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention",
                   "attention")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("optimizer", ("adam", "optimizer", "_foreach", "clip_grad", "linalg_vector_norm")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                "aten::linear", "aten::_scaled_mm", "gemm")),
    ("elementwise", ("add", "mul", "sub", "div", "neg", "silu", "sigmoid", "gelu", "tanh",
                     "pow", "rsqrt", "sqrt", "exp", "sin", "cos", "mean", "sum", "copy",
                     "to_copy", "aten::to", "clone", "fill", "zero", "where", "cat", "index",
                     "embedding", "masked", "clamp", "rms_norm", "cumsum", "arange", "ones",
                     "empty_like", "threshold", "softmax")),
)
SHOWN = ("matmul", "attention", "loss", "optimizer", "elementwise", "other")
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
            "cudaGraphLaunch")


def category(name: str) -> str:
    """An op's category (``CATEGORIES``), "other" when none matches. Autograd's own nodes
    (``MmBackward0``, ``autograd::engine::...``) are "other": the aten ops they call are
    counted themselves (``_log_softmax_backward_data`` is an aten op: the loss)."""
    lower = name.lower()
    if (not lower.startswith("aten::") and "backward" in lower) or name in LAUNCHES:
        return "other"
    return next((c for c, keys in CATEGORIES if any(k in lower for k in keys)), "other")


def _device_self(event) -> float:
    """An averaged event's self time on the GPU, us (the name changed across torch versions)."""
    return getattr(event, "self_device_time_total", None) or getattr(
        event, "self_cuda_time_total", 0.0)


def profiled(run_steps: Callable[[Callable[[], None]], None], cuda: bool, warm: int, steps: int,
             trace: Path | None):
    """Profile ``steps`` steps after ``warm``: ``run_steps(step_done)`` runs warm + steps steps,
    calling ``step_done()`` after each."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ready = []

    def on_ready(prof) -> None:  # the active steps are done: keep their events
        ready.append(prof.key_averages())
        if trace is not None:
            trace.parent.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(trace))

    plan = schedule(wait=0, warmup=warm, active=steps, repeat=1)
    with profile(activities=activities, schedule=plan, on_trace_ready=on_ready) as prof:
        run_steps(prof.step)
    return ready[0]


def _ops(averages) -> list:
    """The CPU-side rows: ops, the CUDA runtime's calls, and ``ProfilerStep#N`` (its self time:
    the Python between the ops). A kernel counts through the op that launched it."""
    cuda = torch.autograd.DeviceType.CUDA
    return [e for e in averages if getattr(e, "device_type", None) != cuda]


def shares(rows: list, time_of: Callable, total: float) -> dict[str, float]:
    """Each category's share of ``total`` (the rest of it is "other")."""
    out = dict.fromkeys(SHOWN, 0.0)
    for e in rows:
        out[category(e.key)] += time_of(e)
    out["other"] += max(0.0, total - sum(out.values()))
    return {k: v / total if total else 0.0 for k, v in out.items()}


def report(title: str, averages, cuda: bool, steps: int, top: int) -> list[str]:
    """The lines printed for one target."""
    ops = _ops(averages)
    lines = [f"## {title}", ""]
    clocks = [("CPU", lambda e: e.self_cpu_time_total)]
    if cuda:
        kernels = sum(_device_self(e) for e in averages if e not in ops)
        clocks.insert(0, ("GPU", _device_self))
        launches = sum(e.count for e in averages if e.key in LAUNCHES) / steps
        lines.append(f"kernel launches per step: {launches:,.0f}; kernel time per step "
                     f"{kernels / steps / 1e3:.1f} ms")
    else:
        aten = sum(e.count for e in ops if e.key.startswith("aten::"))
        lines.append(f"no CUDA: aten ops per step {aten / steps:,.0f} (each would launch kernels "
                     "on a GPU)")
    lines += ["", "| time | " + " | ".join(SHOWN) + " |", "|---|" + "---:|" * len(SHOWN)]
    for clock, time_of in clocks:
        total = sum(time_of(e) for e in ops)
        if clock == "GPU":  # every kernel; those no op launched count as "other"
            total = max(kernels, total)
        share = shares(ops, time_of, total)
        lines.append(f"| {clock}, {total / steps / 1e3:.1f} ms a step | "
                     + " | ".join(f"{100 * share[c]:.0f}%" for c in SHOWN) + " |")
    for clock, time_of in clocks:
        total = sum(time_of(e) for e in ops) or 1.0
        lines += ["", f"top ops by self {clock} time (per step):", "",
                  "| op | category | calls | ms | share |", "|---|---|---:|---:|---:|"]
        for e in sorted(ops, key=time_of, reverse=True)[:top]:
            lines.append(f"| {e.key} | {category(e.key)} | {e.count / steps:.0f} | "
                         f"{time_of(e) / steps / 1e3:.2f} | {100 * time_of(e) / total:.1f}% |")
    return lines + [""]


def probe_steps(device: torch.device, tiny: bool, batch: int, seq: int):
    """Target (a): the probe, stepped by hand."""
    probe = qwen2_probe.make_probe(device, tiny, batch, seq)

    def run(step_done: Callable[[], None], total: int) -> None:
        for _ in range(total):
            probe.step()
            step_done()

    return run


def loop_steps(device: torch.device, tiny: bool, batch: int, seq: int):
    """Target (b): a fresh probe model trained by ``train_loop`` with the trial's optimizer."""
    from study.sections_run import TrainConfig
    from study.trial.data import Example
    from study.trial.train import make_optimizer, train_loop

    probe = qwen2_probe.make_probe(device, tiny, batch, seq)
    model, vocab = probe.model, probe.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def run(step_done: Callable[[], None], total: int) -> None:
        ids = torch.randint(0, vocab, (total * batch, seq), generator=gen).tolist()
        examples = [Example(input_ids=row, labels=row) for row in ids]
        cfg = TrainConfig(steps=total, batch_size=batch, warmup=1)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
        train_loop(model=model, examples=examples, cfg=cfg, seed=0, optimizer=optimizer,
                   total_steps=total, pad_id=0, every=total + 1, amp=probe.amp,
                   callbacks=(lambda step, loss: step_done(),))

    return run


def main(argv: list[str] | None = None) -> int:
    """Profile both targets and print their tables."""
    parser = argparse.ArgumentParser(prog="python bench/profile_step.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the CPU, tiny shapes")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (where CUDA is too)")
    parser.add_argument("--warm", type=int, help="steps before the profiled ones (default 2; "
                        "dry run 1)")
    parser.add_argument("--steps", type=int, help="profiled steps (default 3; dry run 2)")
    parser.add_argument("--top", type=int, default=12, help="ops shown per table")
    parser.add_argument("--trace", type=Path, help="write each target's Chrome trace here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    tiny = args.tiny or not cuda
    device = torch.device("cuda" if cuda else "cpu")
    batch, seq = (2, 32) if tiny else (8, 512)
    warm = args.warm if args.warm is not None else (1 if tiny and not cuda else 2)
    steps = args.steps or (2 if tiny and not cuda else 3)
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    shape = (f"{'tiny Qwen2' if tiny else 'Qwen2-0.5B shape'}, LoRA r8 all-linear, batch {batch}"
             f" x {seq}, {'bf16 autocast' if cuda else 'fp32'}, {where}")
    print(f"# profile_step: {steps} profiled steps after {warm}, {shape}\n")
    targets = (("(a) probe: forward, loss, backward, AdamW", probe_steps, "probe"),
               ("(b) trial loop: study.trial.train.train_loop", loop_steps, "loop"))
    for title, make, name in targets:
        run = make(device, tiny, batch, seq)
        trace = args.trace / f"{name}.json" if args.trace else None
        averages = profiled(lambda done, run=run: run(done, warm + steps), cuda, warm, steps,
                            trace)
        print("\n".join(report(title, averages, cuda, steps, args.top)))
        if cuda:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
