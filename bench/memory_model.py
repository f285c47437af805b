"""The memory estimate against measured training peaks, one process per configuration.

    python -m bench.memory_model                  # the named set (about 15 minutes on 2 cores)
    python -m bench.memory_model --only "qv r1"   # configurations whose name contains this
    python -m bench.memory_model --out docs/memory_model.md
    python -m bench.memory_model --long --save long.json   # the long-trial set (issue 35)

The named set (issue 13): the five variants of ``bench/lora_vs_full.py`` (full; LoRA all-linear
r8 at 16, 8 and 4 bits; qv r8), batch sizes 4 and 16, a sequence length twice the default, and
the 12 classes rank 1 / 8 / 64 x targets qv / all-linear x bits 4 / 16 of the ``default`` space,
and five classify configurations (issue 15: 16-bit, nf4, fp4, full; ``--only classify``).
Each runs ``python -m study.train_one`` for ``--steps`` steps in its own process (a fresh
process: no other configuration's memory in its high-water mark) and its ``peak_mem_mb`` (the
training phase) is compared with ``study.cost.estimate.estimate_cfg`` for the same config. Then the
gate: for budgets at the 25th, 50th and 75th percentiles of the measured peaks, every
configuration measured at least 10% under the budget must be admitted (estimate <= budget) and
every one at least 10% over it refused.

``--long`` runs the long-trial set instead (``long_set``: LoRA trials of the skills, classify and
preference tasks to 450 steps, ``bench/long_trial.py``), reads each peak at steps 8, 50, 150
and 450, prints each (method, bits)'s band (what ``study.cost.estimate.BAND`` holds) and checks
the gate with the bands: at the same percentile budgets, every configuration measured 10% under
admitted and every one 5% over refused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, machine_line
from study import record

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = {"data.size": 400, "data.eval_size": 90, "train.warmup": 6}
SMALL_EVAL = ["--data.eval_size", "8", "--data.test_size", "8", "--eval.num_examples", "8",
              "--eval.latency_prompts", "1", "--eval.latency_tokens", "2",
              "--eval.max_new_tokens", "4"]


def named_set() -> dict[str, dict]:
    """Configuration name -> the TrialConfig fields it sets (the rest: the defaults)."""
    out = {
        "full": {"method": "full", "train.lr": 3e-5},
        "LoRA qv r8": {"lora.targets": "qv"},
        "LoRA all-linear r8": {},
        "LoRA all-linear r8, 4-bit": {"quant.bits": 4},
        "LoRA all-linear r8, batch 4": {"train.batch_size": 4},
        "LoRA all-linear r8, batch 16": {"train.batch_size": 16},
        "LoRA all-linear r8, seq_len 256": {"data.seq_len": 256},
    }
    for rank in (1, 8, 64):
        for targets in ("qv", "all-linear"):
            for bits in (4, 16):
                out[f"default space: {targets} r{rank} {bits}-bit"] = {
                    **DEFAULT_SPACE, "lora.rank": rank, "lora.alpha": rank,
                    "lora.targets": targets, "quant.bits": bits,
                }
    # issue 15: the classify task (a score head, no vocabulary logits) on the built-in set
    classify = {"data.task": "classify"}
    out["classify all-linear r8"] = classify
    out["classify qkv r8"] = {**classify, "lora.targets": "qkv"}
    out["classify qkv r8, nf4"] = {**classify, "lora.targets": "qkv", "quant.scheme": "nf4"}
    out["classify full"] = {**classify, "method": "full", "train.lr": 3e-5}
    out["classify thesis: qkvo r32 fp4 double-quant, batch 4, seq_len 256"] = {
        **classify, "lora.targets": "qkvo", "lora.rank": 32, "quant.scheme": "fp4",
        "quant.double_quant": True, "train.batch_size": 4, "data.seq_len": 256}
    # issue 18: DoRA keeps more per adapted layer (probed by study.cost.activations) and holds W
    out["DoRA all-linear r8"] = {"lora.variant": "dora"}
    out["DoRA all-linear r8, 4-bit"] = {"lora.variant": "dora", "quant.bits": 4}
    out["LoRA all-linear r8, 8-bit"] = {"quant.bits": 8}  # last: the slowest on CPU
    return out


LONG_MARKS = (8, 50, 150, 450)


def long_set() -> dict[str, dict]:
    """The long-trial set (issue 35): LoRA configurations of the skills, classify and preference
    tasks, each run to ``LONG_MARKS[-1]`` steps with its peak read at every mark."""
    thesis = {"data.task": "classify", "lora.targets": "qkvo", "lora.rank": 32,
              "lora.alpha_ratio": 2, "quant.scheme": "fp4", "quant.double_quant": True,
              "train.batch_size": 4, "data.seq_len": 256, "data.size": 600}
    return {
        "skills all-linear r8": {},
        "skills qkvo r4, 8-bit": {"lora.targets": "qkvo", "lora.rank": 4, "quant.bits": 8,
                                  "data.size": 200},
        "skills qv r8, 4-bit": {"lora.targets": "qv", "quant.bits": 4},
        "classify thesis: qkvo r32 fp4 double-quant, batch 4, seq_len 256": thesis,
        "classify qkv r8": {"data.task": "classify", "lora.targets": "qkv"},
        "preference all-linear r8, batch 4": {"data.task": "preference",
                                              "train.batch_size": 4},
    }


def measure_long(name: str, fields: dict, marks: tuple[int, ...], work: Path) -> dict:
    """``fields`` trained to ``marks[-1]`` steps in a process of its own
    (``bench/long_trial.py``), evaluated at the marks after the first; its peaks at the marks."""
    out = work / "".join(c if c.isalnum() else "_" for c in name)
    every = marks[-2] if len(marks) > 1 else marks[-1]
    cmd = [sys.executable, "-m", "bench.long_trial", "--out", str(out), "--marks",
           *map(str, marks), "--", "--steps", str(marks[-1]), "--eval-every", str(every),
           *SMALL_EVAL, *(f"--{k}={v}" for k, v in fields.items())]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return json.loads((out / "growth.json").read_text())


def measure(name: str, fields: dict, steps: int, work: Path) -> dict:
    """Train ``fields`` for ``steps`` steps in a process of its own; its config, metrics, env."""
    out = work / "".join(c if c.isalnum() else "_" for c in name)
    flags = [f"--{k}={v}" for k, v in fields.items()]
    cmd = [sys.executable, "-m", "study.train_one", "--out", str(out), "--steps", str(steps),
           "--eval-every", str(steps), *SMALL_EVAL, *flags]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return {"config": record.read_config(out), "metrics": record.read_metrics(out),
            "env": record.read_env(out)}


def gate_check(rows: list[dict]) -> list[str]:
    """The gate's mistakes at the 25th, 50th and 75th percentile budgets ([] when none)."""
    peaks = sorted(r["measured"] for r in rows)
    mistakes = []
    for q in (25, 50, 75):
        budget = statistics.quantiles(peaks, n=100, method="inclusive")[q - 1]
        for r in rows:
            admitted = r["estimate"] <= budget
            if r["measured"] <= 0.9 * budget and not admitted:
                mistakes.append(f"p{q} budget {budget:.0f} MB refuses {r['name']} "
                                f"(measured {r['measured']:.0f}, estimated {r['estimate']:.0f})")
            if r["measured"] >= 1.1 * budget and admitted:
                mistakes.append(f"p{q} budget {budget:.0f} MB admits {r['name']} "
                                f"(measured {r['measured']:.0f}, estimated {r['estimate']:.0f})")
    return mistakes


def long_table(seen: dict, facts) -> tuple[str, dict]:
    """The long-trial set's peaks at each mark against the estimate, each (method, bits)'s
    band (the most a final peak rose above its estimate, as a share of it), and the gate's
    mistakes with those bands (issue 35: admit what peaks 10% under the budget, refuse what
    peaks 5% over it)."""
    from study.config import TrialConfig
    from study.cost.estimate import estimate_cfg

    rows, bands = [], {}
    marks = sorted({int(m) for one in seen.values() for m in one["marks"]})
    lines = ["| configuration | compute | estimate MB | " + " | ".join(
        f"peak at {m} MB" for m in marks) + " | error at the last |",
        "|---|---|---:|" + "---:|" * (len(marks) + 1)]
    for name, one in seen.items():
        cfg = TrialConfig.from_dict(one["config"])
        estimate = estimate_cfg(cfg, facts, worker_mb=0.0)
        peaks = {int(k): v for k, v in one["marks"].items()}
        last = peaks[max(peaks)]
        key = ("full" if cfg.method == "full" else "lora", cfg.quant.bits)
        bands[key] = max(bands.get(key, 0.0), last / estimate - 1)
        rows.append({"name": name, "cfg": cfg, "estimate": estimate, "measured": last,
                     "peak_any": max(peaks.values()), "compute": one["env"]["compute_dtype"]})
        lines.append(f"| {name} | {one['env']['compute_dtype']} | {estimate:,.0f} | " + " | ".join(
            f"{peaks[m]:,.0f}" if m in peaks else "-" for m in marks)
            + f" | {100 * (estimate - last) / last:+.1f}% |")
    lines += ["", "Bands (the most a peak rose above its estimate): " + ", ".join(
        f"{m} {b}-bit {100 * v:+.1f}%" for (m, b), v in sorted(bands.items()))]
    return "\n".join(lines), {"rows": rows, "bands": bands}


def host_quant_fit(rows: list[dict], facts) -> dict[tuple[int, str], float]:
    """``study.cost.host.HOST_QUANT_BYTES`` from the long-trial rows: per bits and compute
    precision, the bytes per quantized weight that bring the estimate up to the highest peak any
    of its trials reached (so none of them peaks above it); keys with no trial keep their value."""
    from study.cost.host import HOST_QUANT_BYTES

    fitted = dict(HOST_QUANT_BYTES)
    for bits, compute in HOST_QUANT_BYTES:
        short = [(r["peak_any"] - r["estimate"]) * 2**20 / facts.linear_params
                 + HOST_QUANT_BYTES[bits, compute] for r in rows
                 if r["cfg"].quant.bits == bits and _compute(r) == compute]
        if short:
            fitted[bits, compute] = round(float(max(0.0, max(short))), 2)
    return fitted


def _compute(row: dict) -> str:
    """A long-trial row's compute precision as ``HOST_QUANT_BYTES`` names it."""
    return "fp32" if row["compute"] in (None, "fp32", "float32") else "bf16"


def gate_mistakes(rows: list[dict], gated) -> list[str]:
    """The gate's mistakes at the 25th, 50th and 75th percentile budgets of the measured
    peaks, judging ``gated(row)`` MB: one measured 10% under the budget refused, or one 5% over
    admitted."""
    peaks = sorted(r["measured"] for r in rows)
    mistakes = []
    for q in (25, 50, 75):
        budget = statistics.quantiles(peaks, n=100, method="inclusive")[q - 1]
        for r in rows:
            admitted = gated(r) <= budget
            if r["measured"] <= 0.9 * budget and not admitted:
                mistakes.append(f"p{q} {budget:.0f} MB refuses {r['name']}")
            if r["measured"] >= 1.05 * budget and admitted:
                mistakes.append(f"p{q} {budget:.0f} MB admits {r['name']}")
    return mistakes


def fit(seen: dict, facts) -> tuple[float, float, list[float]]:
    """Least squares of measured = RUNTIME_MB + held + BACKWARD x kept over the LoRA
    configurations of ``seen``: the two constants, and each configuration's error (%) when it
    is left out of the fit (full fine-tuning, ``study.cost.estimate.combine``, is never in it)."""
    import numpy as np

    from study.config import TrialConfig
    from study.cost.estimate import combine, estimate_parts

    cfgs = [TrialConfig.from_dict(one["config"]) for one in seen.values()]
    parts = [estimate_parts(cfg, facts) for cfg in cfgs]
    measured = np.array([one["metrics"]["peak_mem_mb"] for one in seen.values()])
    held = np.array([p[0] for p in parts]) / 2**20
    kept = np.array([p[1] for p in parts]) / 2**20
    lora = np.array([cfg.method != "full" for cfg in cfgs])
    design = np.column_stack([np.ones(len(kept)), kept])
    target = measured - held

    def solve(rows):
        return np.linalg.lstsq(design[rows], target[rows], rcond=None)[0]

    runtime, backward = solve(lora)
    loo = []
    for i, (cfg, (h, k)) in enumerate(zip(cfgs, parts)):
        rows = lora & (np.arange(len(kept)) != i)
        r, b = solve(rows)
        loo.append(float(100 * (combine(cfg, facts, h, k, r, b) - measured[i]) / measured[i]))
    return float(runtime), float(backward), loo


def table(rows: list[dict], steps: int, seconds: float) -> str:
    errors = [r["error"] for r in rows]
    lines = [
        f"Machine: {machine_line(machine())}. Command: `python -m bench.memory_model`; "
        f"{steps} steps per configuration, one process each; {seconds:.0f} s.",
        "",
        "| configuration | compute | estimate MB | measured MB | error |",
        "|---|---|---:|---:|---:|",
        *(f"| {r['name']} | {r['dtype']} | {r['estimate']:.0f} | {r['measured']:.0f} | "
          f"{r['error']:+.1f}% |" for r in rows),
        "",
        f"**Median absolute error {statistics.median(abs(e) for e in errors):.1f}%, largest "
        f"{max(errors, key=abs):+.1f}%** over {len(rows)} configurations.",
    ]
    mistakes = gate_check(rows)
    lines += ["", "Gate at the 25th / 50th / 75th percentile budgets: " + (
        "no mistake." if not mistakes else "; ".join(mistakes))]
    return "\n".join(lines)


def _measure_all(args) -> dict:
    """Each configuration of the chosen set (``--long``: the long-trial set) measured in a
    process of its own, saved as it goes (``--save``); or ``--measured``'s."""
    if args.measured:
        return json.loads(args.measured.read_text())
    seen = {}
    chosen = long_set() if args.long else named_set()
    with tempfile.TemporaryDirectory(prefix="memory-model-") as work:
        where = args.keep or Path(work)
        for name, fields in chosen.items():
            if args.only not in name:
                continue
            if args.long:
                seen[name] = measure_long(name, fields, LONG_MARKS, where)
            else:
                seen[name] = measure(name, fields, args.steps, where)
            m = seen[name]["metrics"]
            print(f"{name}: measured {m['peak_mem_mb']:.0f} MB (start "
                  f"{m['start_mem_mb']:.0f}), {m['train_tokens_per_s']:.0f} tokens/s",
                  file=sys.stderr, flush=True)
            if args.save:  # as it goes: a long run interrupted keeps what it measured
                args.save.write_text(json.dumps(seen, indent=1))
    return seen


def _long_report(seen: dict, facts, seconds: float) -> str:
    from study.cost.estimate import gate_cfg

    text, found = long_table(seen, facts)
    mistakes = gate_mistakes(found["rows"], lambda r: gate_cfg(r["cfg"], facts, worker_mb=0.0))
    return (f"Machine: {machine_line(machine())}. Command: `python -m bench.memory_model "
            f"--long`; {seconds:.0f} s.\n\n{text}\n\nThe gate (estimate plus "
            "study.cost.estimate.BAND) at the 25th / 50th / 75th percentile budgets of the last "
            "peaks: " + ("no mistake." if not mistakes else "; ".join(mistakes))
            + f"\n\nHOST_QUANT_BYTES that would cover every peak of this set: "
            f"{host_quant_fit(found['rows'], facts)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8,
                        help="steps per configuration of the named set")
    parser.add_argument("--long", action="store_true",
                        help=f"the long-trial set instead, its peaks at steps {LONG_MARKS}")
    parser.add_argument("--only", default="", help="configurations whose name contains this")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--save", type=Path, help="write the measurements (JSON) here")
    parser.add_argument("--keep", type=Path,
                        help="keep the trial directories here (bench/time_model.py reads them)")
    parser.add_argument("--fit", action="store_true",
                        help="fit RUNTIME_MB and BACKWARD to the measurements and say how well")
    parser.add_argument("--measured", type=Path,
                        help="estimate again for measurements --save wrote (no training)")
    args = parser.parse_args(argv)
    from study.config import TrialConfig
    from study.cost.estimate import estimate_cfg, model_facts

    start = time.time()
    seen = _measure_all(args)
    if args.save:
        args.save.write_text(json.dumps(seen, indent=1))
    # every config: the bundled model
    facts, _ = model_facts(TrialConfig(), ["qv", "qkv", "qkvo", "all-linear"])
    if args.fit:
        runtime, backward, loo = fit(seen, facts)
        print(f"RUNTIME_MB = {runtime:.1f}, BACKWARD = {backward:.3f}; left-one-out errors: "
              f"median |{statistics.median(abs(e) for e in loo):.1f}|%, largest "
              f"{max(loo, key=abs):+.1f}%")
        for name, error in zip(seen, loo):
            print(f"  {name}: {error:+.1f}% left out")
        return 0
    if args.long:
        text = _long_report(seen, facts, time.time() - start)
    else:
        rows = []
        for name, one in seen.items():
            cfg = TrialConfig.from_dict(one["config"])
            estimate = estimate_cfg(cfg, facts, worker_mb=0.0)  # train_one: no Ray worker
            measured = one["metrics"]["peak_mem_mb"]
            rows.append({"name": name, "estimate": estimate, "measured": measured,
                         "error": 100 * (estimate - measured) / measured,
                         "dtype": one["env"]["compute_dtype"]})
        text = table(rows, args.steps, time.time() - start)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
