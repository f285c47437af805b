"""LoRA, DoRA, PiSSA, LoRA+ and rsLoRA side by side, 5 replicates each, paired against LoRA.

    python bench/variants.py [--repeats 5] [--out bench/out/variants]

Each arm is a study of one configuration (``bench/variants.yaml``: the bundled model, skills,
rank 8 all-linear, 16-bit, 40 steps) with one field changed, run ``--repeats`` times with seeds
0..K-1 (``--search grid --scheduler none --no-baselines --max-concurrent 1``: one trial at a
time, so step times are not shared cores). The five studies are then pooled in one report
(``python -m analysis report``): each arm differs from LoRA in one factor, so its paired
comparisons (same seed) are each arm against LoRA. Output: the studies and the report under
``--out``, and ``--out/variants.md``, the table docs/BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study import record  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARMS = {
    "lora": [],
    "dora": ["--set", "lora.variant=dora"],
    "pissa": ["--set", "lora.init=pissa"],
    "loraplus": ["--set", "lora.loraplus_ratio=16"],
    "rslora": ["--set", "lora.rslora=true"],
}
FACTOR_OF = {"dora": "variant", "pissa": "init", "loraplus": "loraplus_ratio",
             "rslora": "rslora"}
METRICS = ("eval_loss", "test_exact_match", "step_ms", "peak_mem_mb")


def run_arm(name: str, args: list[str], out: Path, repeats: int) -> Path:
    if record.is_study_dir(out / name):  # an arm begun before is resumed, not rerun
        cmd = ["--name", name, "--resume", "--storage-path", str(out)]
    else:
        cmd = ["--space", str(HERE / "variants.yaml"), "--search", "grid", "--repeats",
               str(repeats), "--scheduler", "none", "--no-baselines", "--max-concurrent", "1",
               "--name", name, "--storage-path", str(out), *args]
    subprocess.run([sys.executable, "-m", "study.tune", *cmd], cwd=ROOT, check=True)
    return out / name


def table(report: Path) -> list[str]:
    """Each arm's mean [95% CI] per metric, then its paired comparisons against LoRA."""
    configs = pd.read_csv(report / "stats" / "configurations.csv")
    comps = pd.read_csv(report / "stats" / "comparisons.csv")
    lines = ["| arm | n | " + " | ".join(f"{m} mean [95% CI]" for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    paired = ["| arm vs LoRA (same seeds) | pairs | " + " | ".join(
        f"{m}: median ratio, mean diff [95% CI], Wilcoxon p (Holm)" for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS)]
    for label, part in configs.groupby("label", sort=False):
        cells = []
        for metric in METRICS:
            row = part[part["metric"] == metric]
            if not len(row):
                cells.append("-")
                continue
            r = row.iloc[0]
            cells.append(f"{r['mean']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]")
        arm = next((a for a, f in FACTOR_OF.items() if _is_arm(label, a)), "lora")
        lines.append(f"| {arm} ({label}) | {int(part['n'].max())} | " + " | ".join(cells) + " |")
        if arm == "lora":
            continue
        cells, n_pairs = [], "-"
        for metric in METRICS:
            c = comps[(comps["factor"] == FACTOR_OF[arm]) & (comps["metric"] == metric)]
            if not len(c):
                cells.append("-")
                continue
            c = c.iloc[0]
            n_pairs = int(c["n_pairs"])
            ci = ("no spread" if pd.isna(c["ci_low"])
                  else f"[{c['ci_low']:.4g}, {c['ci_high']:.4g}]")
            cells.append(f"{c['median_ratio']:.3f}x, {c['mean_diff']:+.4g} {ci}, "
                         f"p = {c['wilcoxon_p']:.3g} ({c['p_holm']:.3g})")
        paired.append(f"| {arm} | {n_pairs} | " + " | ".join(cells) + " |")
    return [*lines, "", *paired]


def _is_arm(label: str, arm: str) -> bool:
    return {"dora": "dora ", "pissa": "pissa ", "loraplus": "lora+16 ", "rslora": "rs "}[arm] \
        in label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "variants")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dirs = [run_arm(name, extra, args.out, args.repeats) for name, extra in ARMS.items()]
    report = args.out / "report"
    subprocess.run([sys.executable, "-m", "analysis", "report", *map(str, dirs), "--out",
                    str(report)], cwd=ROOT, check=True)
    from bench.common import machine

    lines = [f"Machine: {machine()}", "", *table(report)]
    (args.out / "variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
