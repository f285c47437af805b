"""Our LoRA against PEFT's on the bundled model: step time split, tokens/s, training peak memory.

    python bench/lora_vs_peft.py        # 5 alternating rounds: qv, all-linear x fp32, bf16
    python bench/lora_vs_peft.py --rounds 1 --steps 3 --warmup 1   # a quick look

Every variant (impl x targets x dtype) runs in its own process, since peak RSS is per process;
rounds alternate which implementation goes first. Batch 8 x 128 random tokens, rank 8, alpha 16,
AdamW over the adapter; median forward / backward / optimizer / step time over the measured steps.
The table (markdown, with the machine) goes to stdout and bench/out/lora_vs_peft.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.common import machine, machine_line, median  # noqa: E402


def worker(args: argparse.Namespace) -> dict:
    """One variant in this process: load, adapt, train ``warmup + steps`` steps, measure."""
    import torch

    from study.trial.models import load_model
    from study.trial.resources import PeakMemory, now

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_model("smollm2-135m", device=device)
    if args.impl == "ours":
        from lora_impl import inject_lora

        inject_lora(model, args.targets, rank=8, alpha=16)
    else:
        import peft

        from lora_impl.inject import expand_targets

        config = peft.LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=expand_targets(model, args.targets),
        )
        model = peft.get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    mem = PeakMemory(device)
    times: dict[str, list[float]] = {"fwd": [], "bwd": [], "opt": [], "step": []}
    mem.resume()  # the training phase's peak: reset at its start, so loading is not counted
    for step in range(args.warmup + args.steps):
        t0 = now(device)
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        t1 = now(device)
        loss.backward()
        t2 = now(device)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = now(device)
        if step >= args.warmup:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                times[key].append(value * 1e3)
    step_ms = median(times["step"])
    return {
        "impl": args.impl,
        "targets": args.targets,
        "dtype": args.dtype,
        "trainable": sum(p.numel() for p in params),
        **{f"{k}_ms": median(v) for k, v in times.items()},
        "tokens_per_s": args.batch * args.seq / (step_ms / 1e3),
        "start_mem_mb": mem.start_mb,
        "peak_mem_mb": mem.peak(),
    }


def load_times() -> dict:
    """Seconds for the bundled model's first load (GGUF conversion) and a cached load."""
    cache = Path(tempfile.mkdtemp(prefix="lora-bench-cache-"))
    try:
        out = {}
        for key in ("first_load_s", "cached_load_s"):
            code = (
                "import time,sys; t=time.perf_counter(); from study.trial.models import load_model;"
                f"load_model('smollm2-135m', cache_dir={str(cache)!r});"
                "print(time.perf_counter()-t)"
            )
            res = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                cwd=HERE.parent,
            )
            out[key] = float(res.stdout.strip().splitlines()[-1])
        return out
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_variant(impl: str, targets: str, dtype: str, args: argparse.Namespace) -> dict:
    """Run one variant in a fresh worker process; return the JSON line it prints."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--impl",
        impl,
        "--targets",
        targets,
        "--dtype",
        dtype,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if res.returncode != 0:
        sys.exit(f"variant {impl}/{targets}/{dtype} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def paired_ratios(runs: list[dict], targets: str, dtype: str) -> list[float]:
    """ours/PEFT tokens/s per round: the two runs of a pair ran back to back, so slow drift in
    the machine's speed (large on shared cloud CPUs) cancels out of the ratio."""
    ours = [r for r in runs if (r["targets"], r["dtype"], r["impl"]) == (targets, dtype, "ours")]
    peft = [r for r in runs if (r["targets"], r["dtype"], r["impl"]) == (targets, dtype, "peft")]
    return [o["tokens_per_s"] / p["tokens_per_s"] for o, p in zip(ours, peft)]


def table(runs: list[dict], info: dict, loads: dict, args: argparse.Namespace) -> str:
    """The markdown table of every variant's medians and the paired ours/PEFT ratios."""
    lines = [
        f"Machine: {machine_line(info)}",
        f"Batch {args.batch} x {args.seq} tokens, rank 8, alpha 16, AdamW; {args.rounds} rounds "
        f"alternating ours/PEFT, each variant in its own process; per run the median of "
        f"{args.steps} steps after {args.warmup} warm-up steps; table: median over rounds "
        "[min-max].",
        "",
        "| targets | dtype | impl | trainable | fwd ms | bwd ms | opt ms | step ms | tokens/s "
        "| start MB | peak MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["targets"], r["dtype"]) for r in runs}, key=lambda k: (k[0] != "qv", k[1]))
    for targets, dtype in keys:
        for impl in ("ours", "peft"):
            rs = [
                r for r in runs if (r["targets"], r["dtype"], r["impl"]) == (targets, dtype, impl)
            ]
            if not rs:
                continue

            def cell(key, fmt="{:.0f}", rs=rs):
                vals = [r[key] for r in rs]
                spread = (
                    f" [{fmt.format(min(vals))}-{fmt.format(max(vals))}]" if len(vals) > 1 else ""
                )
                return fmt.format(median(vals)) + spread

            lines.append(
                f"| {targets} | {dtype} | {impl} | {rs[0]['trainable']:,} | {cell('fwd_ms')} | "
                f"{cell('bwd_ms')} | {cell('opt_ms', '{:.1f}')} | {cell('step_ms')} | "
                f"{cell('tokens_per_s', '{:.1f}')} | {cell('start_mem_mb')} | "
                f"{cell('peak_mem_mb')} |"
            )
        ratios = paired_ratios(runs, targets, dtype)
        if ratios:
            gain = [100 * (r - 1) for r in ratios]
            lines.append(
                f"| {targets} | {dtype} | ours/PEFT tokens/s, paired per round | | | | | | "
                f"{median(gain):+.1f}% [{min(gain):+.1f}% to {max(gain):+.1f}%] | | |"
            )
    if loads:
        lines += [
            "",
            f"Bundled model load: first (GGUF conversion) {loads['first_load_s']:.1f} s, "
            f"cached {loads['cached_load_s']:.1f} s (each in a fresh process, incl. imports).",
        ]
    return "\n".join(lines)


def main() -> None:
    """A worker run (``--worker``), or every round of every variant and the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "peft"], default="ours")
    parser.add_argument(
        "--targets", default="qv,all-linear", help="comma list of target shorthands"
    )
    parser.add_argument("--dtype", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--no-load-times", action="store_true")
    parser.add_argument("--table-from", metavar="JSON", help="re-render a saved run's table")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        print(table(saved["runs"], saved["machine"], saved["loads"], args))
        return
    runs = []
    started = time.time()
    for rnd in range(args.rounds):
        order = ("ours", "peft") if rnd % 2 == 0 else ("peft", "ours")
        for targets in args.targets.split(","):
            for dtype in args.dtype.split(","):
                for impl in order:
                    runs.append(run_variant(impl, targets, dtype, args))
                    r = runs[-1]
                    print(
                        f"round {rnd + 1} {targets} {dtype} {impl}: {r['tokens_per_s']:.1f} tok/s, "
                        f"peak {r['peak_mem_mb']:.0f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
    loads = {} if args.no_load_times else load_times()
    info = machine()
    text = table(runs, info, loads, args)
    text += f"\n\nWall time of the benchmark: {(time.time() - started) / 60:.1f} min."
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "lora_vs_peft.md").write_text(text + "\n")
    saved = {"runs": runs, "machine": info, "loads": loads}
    (out / "lora_vs_peft.json").write_text(json.dumps(saved, indent=1))
    print(text)


if __name__ == "__main__":
    main()
