"""The seeds' comparison on the bundled model: full fine-tuning against LoRA variants.

    python bench/lora_vs_full.py                  # 5 variants, each in its own process
    python bench/lora_vs_full.py --steps 10       # a quick look

Variants: full fine-tuning (lr 3e-5, the usual order of magnitude lower than LoRA's), LoRA `qv`
r8, LoRA `all-linear` r8, LoRA all-linear r8 on an 8-bit base, and on a 4-bit NF4 base (lr 3e-4).
Every variant trains the same steps on the same skills data through ``python -m study.train_one``
(auto dtype: the faster of fp32 and bf16 autocast, measured) and reports: trainable parameters,
median forward / backward / step time, training tokens/s, training-phase peak memory, eval loss
after those steps, test exact match, and decode latency unmerged / merged. Table: stdout and
bench/out/lora_vs_full.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line  # noqa: E402
from study import record  # noqa: E402

OUT = HERE / "out" / "lora_vs_full"
VARIANTS = {
    "full": ["--method", "full", "--lr", "3e-5"],
    "LoRA qv r8": ["--targets", "qv"],
    "LoRA all-linear r8": [],
    "LoRA all-linear r8, 8-bit base": ["--bits", "8"],
    "LoRA all-linear r8, 4-bit NF4 base": ["--bits", "4"],
}


def main() -> None:
    """Train each variant in its own process and write the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    lines = [
        f"Machine: {machine_line(machine())}",
        f"{args.steps} steps of batch 8 on the skills task (400 examples), one process per "
        "variant.",
        "",
        "| variant | trainable | fwd ms | bwd ms | step ms | tokens/s | peak MB | eval loss "
        "| test EM | latency ms/tok unmerged | merged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, flags in VARIANTS.items():
        out = OUT / name.replace(" ", "_").replace(",", "")
        cmd = [
            sys.executable,
            "-m",
            "study.train_one",
            "--out",
            str(out),
            "--steps",
            str(args.steps),
            "--eval-every",
            str(args.steps),
            *flags,
        ]
        subprocess.run(cmd, cwd=HERE.parent, check=True, stdout=subprocess.DEVNULL)
        m = record.read_metrics(out)
        print(f"{name}: done", file=sys.stderr, flush=True)
        lines.append(
            f"| {name} | {m['trainable_params']:,} | {m['fwd_ms']:.0f} | {m['bwd_ms']:.0f} | "
            f"{m['step_ms']:.0f} | {m['train_tokens_per_s']:.0f} | {m['peak_mem_mb']:.0f} | "
            f"{m['eval_loss']:.3f} | {100 * m['test_exact_match']:.0f}% | "
            f"{m['latency_ms_per_token_unmerged']:.1f} | {m['latency_ms_per_token_merged']:.1f} |"
        )
    text = "\n".join(lines)
    (HERE / "out" / "lora_vs_full.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
