"""`make gpu-check`: the GPU path end to end, without Ray, on the machine that is lent.

    python bench/gpu_check.py             # CUDA: the whole check; no CUDA: its CPU dry run
    python bench/gpu_check.py --dry-run   # the CPU dry run even where CUDA exists

Six parts, one table:

1. ``pytest -m gpu``: the `gpu`-marked tests (those that need Ray as well skip where it is
   missing; every test module must import without Ray, Optuna, datasets and gguf);
2. ``run_trial`` on the tiny Llama at 16 bits (bf16 storage on a GPU with bf16), 8 bits
   (LLM.int8) and 4 bits (nf4), each merged (merged and unmerged logits compared: close at 16
   bits, the re-quantization error shown at 4 and 8; the base restored by unmerge, bitwise or
   within 1e-6 for an fp32 base) and exported (adapter and merged model); peak memory from
   ``torch.cuda.max_memory_allocated``; the 16-bit trial run twice, its losses compared with
   ``RTOL`` (the tolerance ``study.reproduce`` documents for CUDA);
3. a classify trial (the built-in set, score head, nf4 base, bf16 where the GPU has it) and its
   merged export as transformers' sequence classifier (where pandas, which reads the set, is
   installed);
4. a throughput probe: a randomly initialised model with Qwen2-0.5B's config (no download),
   LoRA r8 on all linear layers, batch 8 x 512 tokens, bf16 autocast: tokens/s and model-FLOPs
   utilisation (against the GPU's dense bf16 peak where known, and the matmul rate measured here);
5. ``bench/gpu_memory.py`` (at most 4 minutes): the memory estimate against
   ``torch.cuda.max_memory_allocated`` and the reserved peak for a named set on the Qwen2-0.5B
   shape (16/8/4 bits, ranks 8 and 64, qv and all-linear, batch 8 and 16), its constants also
   fitted on the set with each configuration's error left out of the fit;
6. ``bench/gpu_throughput.py`` in what is left of 9 minutes (``GPU_BUDGET_S``): our trial
   against ``transformers.Trainer`` + PEFT on that shape (and the Trainer compiled), each in a
   process of its own, and K trials of it at once per GPU, written to the user's
   ``<cache>/gpu_share.json`` for ``--gpus-per-trial auto``.

Ray, Optuna, datasets and gguf are blocked from import throughout (the lent machine has none of
them). Where CUDA is missing the same script runs on the CPU with the tiny model and a tiny
Qwen2-shaped probe, says so, and exits 0: it is run by `make test-slow`. Carrying bitsandbytes
to the lent machine: docs/GUIDE.md ("Checking the GPU path").
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.blocking import ENV, GPU_MACHINE_LACKS, block  # noqa: E402

block(GPU_MACHINE_LACKS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from study.trial.models.bundled import cache_root  # noqa: E402

# The user's cache, read before the check takes a temporary one of its own: the trials-per-GPU
# measurement goes there, where `--gpus-per-trial auto` looks for it (bench/gpu_throughput.py).
USER_CACHE = cache_root()
os.environ.setdefault("LORA_STUDY_CACHE", tempfile.mkdtemp(prefix="gpu-check-cache-"))

import torch  # noqa: E402

from bench.qwen2_probe import dense_bf16_peak, flops_per_token, make_probe  # noqa: E402

RTOL = 1e-3  # two runs of one config on CUDA: losses agree to this (study.reproduce's default)
GPU_BUDGET_S = 540.0  # the whole check on a GPU: 9 minutes (the memory set's 4 of them)


def run_gpu_tests(rows: list, dry: bool) -> None:
    """``pytest -m gpu`` in a subprocess with the lent machine's missing packages blocked."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, ENV: ",".join(GPU_MACHINE_LACKS), "PYTHONPATH": path}  # carried bnb
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
    if proc.returncode not in (0, 5):
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    rows.append(("pytest -m gpu", tail[0].strip("= "), proc.returncode in (0, 5)))


def trial_config(bits: int, device: torch.device):
    from study.config import TrialConfig

    return TrialConfig.from_dict({
        "model.name": "tiny-llama", "lora.rank": 8, "lora.targets": "all-linear",
        "quant.bits": bits, "data.size": 64, "data.eval_size": 30, "data.test_size": 30,
        "train.steps": 8, "train.batch_size": 4, "train.warmup": 2, "train.lr": 0.003,
        "train.dtype": "auto" if device.type == "cuda" else "fp32", "eval.every": 4,
        "eval.max_new_tokens": 4, "eval.latency_tokens": 4, "eval.latency_prompts": 2,
    })


def check_merge(cfg, trial_dir: Path, device: torch.device) -> tuple[float, bool]:
    """(max |merged - unmerged| logit difference relative to the largest logit, base restored
    bitwise by unmerge) for a trial's adapter on a freshly loaded base."""
    from lora_impl import load_adapter, merge, unmerge
    from lora_impl.layer import lora_layers
    from study import record
    from study.trial import precision
    from study.trial.models import load_model

    env = record.read_env(trial_dir)
    storage = precision.storage_dtype(device, env["dtype_choice"]["name"], cfg.method)
    model, _ = load_model(cfg.model.name, cfg.quant, device=device, dtype=storage)
    load_adapter(model, record.adapter_dir(trial_dir))  # injects the adapter it reads
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    before = {n: layer.base_layer.weight.detach().clone() for n, layer in lora_layers(model)}
    with torch.no_grad():
        unmerged = model(ids).logits.float()
        merge(model)
        merged = model(ids).logits.float()
        unmerge(model)
    # bitwise for quantized and 16-bit bases (the originals are kept); W + d - d for fp32
    restored = all(
        torch.equal(before[n], w) or (w.dtype == torch.float32 and torch.allclose(
            before[n], w, rtol=0, atol=1e-6))
        for n, layer in lora_layers(model) for w in [layer.base_layer.weight.detach()]
    )
    return ((merged - unmerged).abs().max() / unmerged.abs().max()).item(), restored


def run_trials(rows: list, device: torch.device, work: Path) -> None:
    """Three trials (16, 8, 4 bits), merged and exported; the 16-bit one twice."""
    from study import record
    from study.export import export
    from study.trial.run import run_trial

    losses = {}
    for bits in (16, 8, 4):
        cfg = trial_config(bits, device)
        out = work / f"trial-{bits}"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        metrics = run_trial(cfg, out_dir=out)
        env = record.read_env(out)
        curve = record.read_curve(out)[0]
        losses[bits] = [p["train_loss"] for p in curve] + [p["eval_loss"] for p in curve]
        diff, restored = check_merge(cfg, out, device)
        export(out, work / f"adapter-{bits}")
        export(out, work / f"merged-{bits}", merged=True)
        # a 16-bit merge only rounds W + d once: close; a 4/8-bit merge re-quantizes W + d, whose
        # error grows with the trained update (shown, not judged: tests/test_merge.py checks
        # that the merged weight is the re-quantized sum)
        ok = math.isfinite(metrics["eval_loss"]) and restored and math.isfinite(diff)
        ok = ok and (bits < 16 or diff < 1e-2)
        rows.append((
            f"trial {bits}-bit ({env['weights']}, {env['compute_dtype']})",
            f"eval loss {metrics['eval_loss']:.4f}, peak {metrics['peak_mem_mb']:.1f} MB, "
            f"{metrics['train_tokens_per_s']:.0f} tok/s; merged vs unmerged logits "
            f"{diff:.1e} (relative{', re-quantized' if bits < 16 else ''}), "
            f"unmerge restores the base: {restored}; exported adapter and merged model; "
            f"auto's matmul ms: {env['dtype_choice'].get('timings_ms')}", ok))
    again = work / "trial-16-again"
    run_trial(trial_config(16, device), out_dir=again)
    curve = record.read_curve(again)[0]
    second = [p["train_loss"] for p in curve] + [p["eval_loss"] for p in curve]
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(second, losses[16]))
    rows.append(("16-bit trial run twice", f"largest relative loss difference {worst:.2e} "
                 f"(tolerance {RTOL:g})", worst <= RTOL))


def measured_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * n**3 / (time.perf_counter() - t0)


def run_throughput(rows: list, device: torch.device, dry: bool) -> None:
    """LoRA all-linear r8 on a random Qwen2-0.5B-shaped model: tokens/s and MFU."""
    batch, seq, steps, warm = (2, 32, 2, 1) if dry else (8, 512, 10, 3)
    probe = make_probe(device, dry, batch, seq)
    config, amp, lora = probe.config, probe.amp, probe.lora_params
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(warm + steps):
        if step == warm:
            sync()
            t0 = time.perf_counter()
        loss = probe.step()
    sync()
    seconds = time.perf_counter() - t0
    tokens_per_s = batch * seq * steps / seconds
    achieved = tokens_per_s * flops_per_token(config, seq, lora)
    matmul = measured_matmul_flops(device, amp or torch.float32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = dense_bf16_peak(name)
    mfu = ""
    if peak:
        mfu = f"MFU {100 * achieved / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s dense bf16, "
    memory = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if amp else ""
    what = "tiny Qwen2-shaped (dry run)" if dry else "Qwen2-0.5B-shaped, random init"
    rows.append((
        f"throughput: {what}, LoRA all-linear r8, batch {batch} x {seq}",
        f"{tokens_per_s:,.0f} tok/s, {achieved / 1e12:.1f} TFLOP/s; {mfu}"
        f"{100 * achieved / matmul:.1f}% of the {matmul / 1e12:.1f} TFLOP/s "
        f"{'bf16' if amp else 'fp32'} matmul measured here{memory}",
        math.isfinite(loss.item())))


def run_classify(rows: list, device: torch.device, work: Path) -> None:
    """A 4-bit classify trial on the built-in set, exported merged and reloaded."""
    try:
        import pandas  # noqa: F401  (reads the built-in set; the lent machine may lack it)
    except ImportError:
        rows.append(("classify trial nf4", "skipped: pandas is not installed here", True))
        return
    from study import record
    from study.config import TrialConfig
    from study.export import export
    from study.trial.run import run_trial

    cfg = TrialConfig.from_dict({
        **trial_config(4, device).to_dict(), "data": {"task": "classify", "size": 120,
                                                      "seq_len": 64, "eval_size": 30,
                                                      "test_size": 30},
        "lora.targets": "qkv", "quant.scheme": "nf4", "quant.double_quant": True})
    metrics = run_trial(cfg, out_dir=work / "classify")
    env = record.read_env(work / "classify")
    export(work / "classify", work / "classify-merged", merged=True)
    from transformers import AutoModelForSequenceClassification

    labels = AutoModelForSequenceClassification.from_pretrained(
        work / "classify-merged").config.num_labels
    ok = math.isfinite(metrics["eval_loss"]) and 0 <= metrics["test_accuracy"] <= 1
    latency = metrics["latency_ms_per_example_merged"]
    rows.append((f"classify trial nf4 ({env['weights']}, {env['compute_dtype']})",
                 f"test accuracy {metrics['test_accuracy']:.3f} (6 classes, 8 steps), peak "
                 f"{metrics['peak_mem_mb']:.1f} MB, latency {latency:.2f} ms/text merged; "
                 f"exported merged as a transformers classifier of {labels} labels",
                 ok and labels == 6))


def run_memory(rows: list, dry: bool, started: float) -> None:
    """bench/gpu_memory.py: the memory estimate against the GPU's peaks for the named set on
    the Qwen2-0.5B shape, in at most its ``BUDGET_S`` (or what is left of the check's)."""
    from bench import gpu_memory

    left = GPU_BUDGET_S - (time.perf_counter() - started)
    gpu_memory.run(rows, dry, None if dry else min(gpu_memory.BUDGET_S, left))


def run_against_trainer(rows: list, dry: bool, started: float) -> None:
    """bench/gpu_throughput.py within what is left of ``GPU_BUDGET_S``: our trial against the
    Trainer, and K trials per GPU into the user's ``gpu_share.json`` (the dry run: ours and the
    Trainer in this process, the measurement in this check's temporary cache)."""
    from bench import gpu_throughput
    from study.search.gpu_share import FILE

    budget = None if dry else GPU_BUDGET_S - (time.perf_counter() - started)
    cache = (cache_root() if dry else USER_CACHE) / FILE
    gpu_throughput.run(rows, dry, budget, cache, quick=dry)


def main(argv: list[str] | None = None) -> int:
    """Run the check; print one table; exit 1 if a part failed (0 on a CPU dry run that passed)."""
    parser = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU even with CUDA")
    args = parser.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    started = time.perf_counter()
    if dry:
        print("gpu-check: no CUDA device here (or --dry-run): the CPU dry run on the tiny model, "
              f"with {', '.join(GPU_MACHINE_LACKS)} blocked from import")
    rows: list[tuple[str, str, bool]] = []
    run_gpu_tests(rows, dry)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        run_trials(rows, device, Path(work))
        run_classify(rows, device, Path(work))
    run_memory(rows, dry, started)
    run_throughput(rows, device, dry)
    run_against_trainer(rows, dry, started)
    where = "CPU dry run" if dry else torch.cuda.get_device_name(device)
    print(f"\n| gpu-check ({where}; torch {torch.__version__}, "
          f"{time.perf_counter() - started:.0f} s) | result | ok |\n|---|---|---|")
    for what, result, ok in rows:
        print(f"| {what} | {result} | {'yes' if ok else '**NO**'} |")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
