"""SFT, then DPO from its adapter, on the bundled model and the built-in preference set.

    python bench/dpo_after_sft.py                  # seeds 0 1 2 (about 15 min a seed, 2 cores)
    python bench/dpo_after_sft.py --seeds 0 --dpo-steps 30
    python bench/dpo_after_sft.py --sft-weight 1 --reuse   # DPO plus the chosen's SFT loss

Per seed, each trial in a process of its own (their peaks are compared): the default skills SFT
trial (``python -m study.train_one --seed S``: every other field its default), then DPO from its
adapter (``--task preference --lora.init_from SFT/adapter``) at half the SFT batch size, so both
hold the same number of sequences per micro-batch (a DPO example is two). Prints and writes
(bench/out/dpo_after_sft.md): the DPO trial's eval reward accuracy, the test exact match before
(SFT) and after (DPO) with their mean and 95% t interval over the seeds, the two peaks, and the
memory estimate of the DPO trial against its peak.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line, run_train_one  # noqa: E402
from study import metrics as M  # noqa: E402
from study import record  # noqa: E402

DPO_FLAGS = ("--task", "preference", "--lr", "2e-4", "--dpo.beta", "0.1")


def interval(values: list[float]) -> str:
    """mean [95% t interval] of ``values`` (scipy's t quantile); the value alone for one."""
    if len(values) < 2:
        return f"{values[0]:.3f}"
    from scipy import stats

    mean, sem = statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5
    half = stats.t.ppf(0.975, len(values) - 1) * sem
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def dpo_estimate(flags: list[str]) -> float:
    """The memory model's estimate for the DPO trial's config (no Ray worker: train_one)."""
    from study.config import TrialConfig
    from study.cost.estimate import estimate_cfg, model_facts
    from study.train_one import build_config, parse_args

    cfg: TrialConfig = build_config(parse_args([*flags, "--out", "unused"]))
    facts, _ = model_facts(cfg, [cfg.lora.targets])
    return estimate_cfg(cfg, facts, worker_mb=0.0)


def trial(out: Path, reuse: bool, *flags: str) -> tuple[dict, float | None]:
    """A finished trial's metrics where ``out`` holds one (``reuse``), else it run now."""
    if reuse and record.has_metrics(out) and record.is_final(record.read_metrics(out)):
        return record.read_metrics(out), None
    return run_train_one(out, *flags, quiet=True)


def one_seed(seed: int, work: Path, dpo_steps: int, reuse: bool, sft_weight: float) -> dict:
    sft, sft_s = trial(work / f"sft-{seed}", reuse, "--seed", str(seed))
    batch = max(1, 8 // 2)  # TrainConfig's default batch of 8 sequences, as 4 pairs
    flags = ["--seed", str(seed), *DPO_FLAGS, "--lora.init_from",
             str(record.adapter_dir(work / f"sft-{seed}")), "--batch-size", str(batch),
             "--steps", str(dpo_steps),
             "--eval.every", str(dpo_steps), "--warmup", str(max(1, dpo_steps // 10)),
             "--dpo.sft_weight", str(sft_weight)]
    name = f"dpo-{seed}" if not sft_weight else f"dpo-sft{sft_weight:g}-{seed}"
    dpo, dpo_s = trial(work / name, reuse, *flags)
    return {"seed": seed, "sft": sft, "dpo": dpo, "sft_s": sft_s, "dpo_s": dpo_s,
            "estimate": dpo_estimate(flags)}


def table(rows: list[dict], dpo_steps: int, sft_weight: float, seconds: float) -> str:
    lines = [
        "| seed | SFT test EM | DPO test EM | DPO eval reward acc | margin | SFT peak MB | "
        "DPO peak MB | DPO / SFT peak | DPO estimate MB | estimate error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sft_peak, dpo_peak = r["sft"][M.PEAK_MEM_MB], r["dpo"][M.PEAK_MEM_MB]
        lines.append(
            f"| {r['seed']} | {r['sft'][M.TEST_EXACT_MATCH]:.3f} | "
            f"{r['dpo'][M.TEST_EXACT_MATCH]:.3f} | {r['dpo'][M.REWARD_ACCURACY]:.3f} | "
            f"{r['dpo'][M.REWARD_MARGIN]:.3f} | {sft_peak:,.0f} | {dpo_peak:,.0f} | "
            f"{dpo_peak / sft_peak:.2f}x | {r['estimate']:,.0f} | "
            f"{(r['estimate'] - dpo_peak) / dpo_peak:+.1%} |")
    before = [r["sft"][M.TEST_EXACT_MATCH] for r in rows]
    after = [r["dpo"][M.TEST_EXACT_MATCH] for r in rows]
    lines += [
        "",
        f"Test exact match, mean [95% t interval] over {len(rows)} seeds: before (SFT) "
        f"{interval(before)}, after (DPO) {interval(after)}; eval reward accuracy "
        f"{interval([r['dpo'][M.REWARD_ACCURACY] for r in rows])}. DPO: {dpo_steps} steps of 4 "
        f"pairs, {' '.join(DPO_FLAGS)} --dpo.sft_weight {sft_weight:g}, from the SFT adapter; "
        "SFT: the default skills trial. "
        f"{seconds / 60:.0f} min in all.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dpo-steps", type=int, default=60)
    parser.add_argument("--work", type=Path, default=HERE / "out" / "dpo_after_sft")
    parser.add_argument("--sft-weight", type=float, default=0.0,
                        help="dpo.sft_weight of the DPO trials (0: plain DPO)")
    parser.add_argument("--reuse", action="store_true",
                        help="read the finished trials of an earlier run instead of rerunning")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = [one_seed(seed, args.work, args.dpo_steps, args.reuse, args.sft_weight)
            for seed in args.seeds]
    text = (f"Machine: {machine_line(machine())}\n\n"
            + table(rows, args.dpo_steps, args.sft_weight, time.perf_counter() - start))
    print(text)
    (HERE / "out").mkdir(exist_ok=True)
    suffix = f"-sft{args.sft_weight:g}" if args.sft_weight else ""
    (HERE / "out" / f"dpo_after_sft{suffix}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
