"""The default skills recipe on the bundled model against the untouched model (`base`).

    python bench/skills_recipe.py            # base, then the default recipe, each in a process

Runs ``python -m study.train_one`` with its defaults (SmolLM2-135M-Instruct, LoRA r8 alpha 16
all-linear, lr 3e-4, 400 examples, 150 steps of batch 8, auto dtype) and with ``--method base``,
then prints test exact match (150 held-out prompts, 50 per skill), the gain in points and the
wall time of each command. Results: bench/out/skills_recipe/ and stdout (markdown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line, run_train_one  # noqa: E402
from study import record  # noqa: E402

OUT = HERE / "out" / "skills_recipe"


def run(name: str, *flags: str) -> tuple[dict, float]:
    """Run one train_one command; return its final metrics and wall time in seconds."""
    return run_train_one(OUT / name, *flags)


def main() -> None:
    """Run both commands and print the table (``--help`` only shows this module's docstring)."""
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    base, base_s = run("base", "--method", "base")
    lora, lora_s = run("lora")
    env = record.read_env(OUT / "lora")
    rows = [("base (no training)", base, base_s), ("default recipe (LoRA)", lora, lora_s)]
    lines = [
        f"Machine: {machine_line(machine())}; compute {env['compute_dtype']}",
        "",
        "| run | test exact match | by skill (test) | eval loss | train tokens/s | peak MB "
        "| train s | wall s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, m, wall in rows:
        by_skill = ", ".join(
            f"{k} {100 * v:.0f}%" for k, v in m["test_exact_match_by_skill"].items()
        )
        tps = m.get("train_tokens_per_s")
        train = f"{tps:.0f} | {m['peak_mem_mb']:.0f} | {m['train_s']:.0f}" if tps else "- | - | -"
        lines.append(
            f"| {name} | {100 * m['test_exact_match']:.1f}% | {by_skill} | "
            f"{m['eval_loss']:.3f} | {train} | {wall:.0f} |"
        )
    gain = 100 * (lora["test_exact_match"] - base["test_exact_match"])
    lines += [
        "",
        f"Gain: {gain:+.1f} points of test exact match; the recipe's wall time "
        f"{lora_s / 60:.1f} min (model load, data, 150 steps, 3 evaluations, test, "
        "latency).",
    ]
    text = "\n".join(lines)
    (OUT / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
