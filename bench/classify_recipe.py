"""The default classify trial on the bundled model and the built-in set, against its untrained head.

    python bench/classify_recipe.py          # base, then the default LoRA trial, each a process

Runs ``python -m study.train_one --task classify`` with every other flag at its default
(SmolLM2-135M-Instruct, LoRA r8 alpha 16 all-linear plus the score head, lr 3e-4, 400 training
texts of the built-in set, 150 steps of batch 8, auto dtype) and with ``--method base`` (the
same body and a head that never trained), then prints test accuracy and macro F1 (150 held-out
texts, 25 per class, 6 classes: chance 16.7%), the gain in points and the wall time of each
command. Results: bench/out/classify_recipe/ and stdout (markdown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line, run_train_one  # noqa: E402
from study import record  # noqa: E402

OUT = HERE / "out" / "classify_recipe"


def run(name: str, *flags: str) -> tuple[dict, float]:
    """Run one classify train_one command; return its final metrics and wall time in seconds."""
    return run_train_one(OUT / name, "--task", "classify", *flags, quiet=True)


def main() -> None:
    """Run both commands and print the table (``--help`` only shows this module's docstring)."""
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    base, base_s = run("base", "--method", "base")
    lora, lora_s = run("lora")
    env = record.read_env(OUT / "lora")
    lines = [
        f"Machine: {machine_line(machine())}; compute {env['compute_dtype']}",
        "",
        "| run | test accuracy | test macro F1 | eval loss | train tokens/s | peak MB | train s "
        "| wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m, wall in (("base (untrained head)", base, base_s),
                          ("default classify trial (LoRA + head)", lora, lora_s)):
        tps = m.get("train_tokens_per_s")
        train = f"{tps:.0f} | {m['peak_mem_mb']:.0f} | {m['train_s']:.0f}" if tps else "- | - | -"
        lines.append(f"| {name} | {100 * m['test_accuracy']:.1f}% | "
                     f"{100 * m['test_f1_macro']:.1f}% | {m['eval_loss']:.3f} | {train} | "
                     f"{wall:.0f} |")
    gain = 100 * (lora["test_accuracy"] - base["test_accuracy"])
    lines += ["", f"Gain: {gain:+.1f} points of test accuracy; the trial's wall time "
              f"{lora_s / 60:.1f} min (process start, model load, data, 150 steps, 3 "
              "evaluations, test, latency)."]
    text = "\n".join(lines)
    (OUT / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
