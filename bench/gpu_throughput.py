"""Our trial against transformers' Trainer + PEFT on the Qwen2-0.5B shape, and K trials per GPU.

    python bench/gpu_throughput.py                  # CUDA: both parts; no CUDA: the CPU dry run
    python bench/gpu_throughput.py --dry-run        # a tiny Qwen2, 3 steps a run, on the CPU
    python bench/gpu_throughput.py --budget-s 240   # skip what would not end within 240 s

`make gpu-check` runs it last (``bench/gpu_check.py``), within the check's 6 minutes. The model,
its FLOPs per token and the GPUs' peaks are the check's probe's (``bench/qwen2_probe.py``).

1. Against the Trainer. A randomly initialised model of Qwen2-0.5B's config (no download;
   ``qwen2_probe.qwen2_config``) is written once, seeded, in bf16, with the byte-level tokenizer
   of the tiny models; every run loads it, so both sides start from the same weights. LoRA r8,
   alpha 16, all linear layers; the lm task on the start of the built-in text (written beside
   the model) in 512-token blocks, batches of 8 in our trial's seeded order (the Trainer reads
   the same rows in that order, ``train_sampling_strategy="sequential"``: the same batches); bf16
   weights and autocast; SDPA attention on both sides. Ours is ``run_trial`` at its defaults
   otherwise, its tokens/s its own ``train_tokens_per_s`` (the steps after the first). The
   Trainer is ``transformers.Trainer`` over ``peft.get_peft_model`` at its defaults otherwise
   (but for its output directory and no progress bar), and once more with
   ``torch_compile=True``; its tokens/s is over its steps after the first,
   timed by a callback after a CUDA sync; ours once more with ``train.compile=on`` (its decoder
   layers compiled, regional). Each run is a process of its own, alternating: ours, Trainer,
   (part 2), Trainer compiled, ours compiled, then Trainer and ours again. Reported: tokens/s, MFU
   (``qwen2_probe.flops_per_token`` against the GPU's dense bf16 peak), peak memory
   (``torch.cuda.max_memory_allocated`` over training) and each side's first-step loss (the
   same batch and weights: compared relative).
2. Trials per GPU. K = 2, 4, ... processes of the same trial at once (K = 1 is part 1's), as
   many as the memory estimate (``study.cost.estimate`` plus a CUDA context each) fits in the
   GPU's free memory and the CPU has cores; each caps itself at 1/K of the memory as a study's
   trial does (``study.search.runner.share_gpu``) and waits after its first step until all K
   are there, so their timed steps run together. The aggregate per K (the tokens of their
   timed steps over the wall time from the first release to the last step; the sum of the
   trials' own ``train_tokens_per_s`` is shown beside it) goes to ``<cache>/gpu_share.json``
   (the user's cache, not the check's temporary one), where ``--gpus-per-trial auto`` reads it
   (``study.search.gpu_share``).

The dry run proves every part on the CPU (the compiled Trainer with the ``eager`` backend: no
C++ toolchain needed) and writes its K = 1, 2 measurement to the check's temporary cache;
gpu_check's own dry run runs ours and the Trainer once each in its process (K = 1 only). A time
budget skips what would not end in it (the parts in the order above), and says so; each process
is given at most what is left. A run's own stdout is one JSON line (``--worker``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.blocking import GPU_MACHINE_LACKS, block  # noqa: E402

block(GPU_MACHINE_LACKS)  # the lent machine has none of them: proved not needed here either
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

from bench import qwen2_probe  # noqa: E402

RANK, ALPHA = 8, 16
TEXT = "blocks.txt"  # the lm text, beside the model (tokenized once, in the check's cache)
SHAPE, DRY_SHAPE = (8, 512), (2, 32)  # rows x tokens of a batch
STEPS, DRY_STEPS = 30, 3  # a comparison run's steps (the first is warm-up on both sides)
SHARE_STEPS, MIN_SHARE_STEPS = 48, 12  # K trials at once run max(MIN, SHARE // K) steps each
CONTEXT_MB = 600.0  # a CUDA context and cuBLAS's workspace per process: outside the estimate
MAX_K = 16
LOSS_RTOL = 1e-2  # first-step losses of the two sides (bf16: the head's logits round apart)
MIN_BUDGET_S = 90.0  # less left than this: nothing is started (the model alone takes ~20 s)
# seconds a run is expected to take before one was seen (then: the longest seen, x 1.3)
EXPECTED_S = {"ours": 40.0, "hf": 40.0, "hf-compile": 120.0, "ours-compile": 120.0,
              "share": 50.0}
LABELS = {"ours": "ours: run_trial (lora_impl)", "hf": "Trainer + PEFT",
          "hf-compile": "Trainer + PEFT, torch_compile",
          "ours-compile": "ours, train.compile on (regional)"}


def trial_config(model_dir: Path, dry: bool, steps: int, compile: str = "off"):
    """Our side's trial: the written model, LoRA r8 all-linear, lm blocks, one short evaluation
    at the end (its latency and generation cut to a token); ``compile``: its train.compile."""
    from study.config import TrialConfig

    batch, seq = DRY_SHAPE if dry else SHAPE
    return TrialConfig.from_dict({
        "model.name": str(model_dir), "method": "lora", "lora.rank": RANK, "lora.alpha": ALPHA,
        "lora.targets": "all-linear", "quant.bits": 16, "seed": 0,
        "data.task": "lm", "data.source": str(model_dir / TEXT), "data.seq_len": seq,
        "data.size": steps * batch, "data.eval_size": 1, "data.test_size": 1,
        "train.steps": steps, "train.batch_size": batch, "train.dtype": "fp32" if dry else "bf16",
        "eval.every": steps, "eval.max_new_tokens": 1, "eval.num_examples": 1,
        "eval.early_prompts": 0, "eval.latency_tokens": 1, "eval.latency_prompts": 1,
        "train.compile": compile,
    })


def write_model(out: Path, dry: bool, steps: int) -> Path:
    """The random Qwen2-shaped model (seed 0) and the byte-level tokenizer, saved in ``out``,
    and the text of the runs' lm blocks: the built-in source's start, as much as ``steps``
    batches and the eval and test blocks need (a byte-level token per character at least)."""
    from transformers import Qwen2ForCausalLM

    from study.trial.models.tiny import tiny_tokenizer
    from study.trial.tasks.text import lm_text

    batch, seq = DRY_SHAPE if dry else SHAPE
    out.mkdir(parents=True)
    (out / TEXT).write_text(lm_text("builtin")[: (steps * batch + 3) * seq])
    tokenizer = tiny_tokenizer()
    config = qwen2_probe.qwen2_config(dry)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    device = torch.device("cpu" if dry else "cuda")
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it is fast; the weights are what is saved
        model = Qwen2ForCausalLM(config)
    model.to(torch.float32 if dry else torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if not dry:
        torch.cuda.empty_cache()
    return out


# --- the runs (each a process of its own: ``--worker``) ------------------------------------


def _barrier(directory: Path, index: int, k: int, state: dict):
    """A step callback: after the first step, wait until all ``k`` trials have taken theirs."""
    def callback(step: int, loss: float) -> None:
        state.setdefault("first_loss", loss)
        if "released" not in state and k > 1:
            (directory / str(index)).touch()
            waited = time.monotonic()
            while len(list(directory.iterdir())) < k and time.monotonic() - waited < 600:
                time.sleep(0.02)
        state.setdefault("released", time.time())
        state["ended"] = time.time()

    return callback


def run_ours(args: argparse.Namespace) -> dict:
    """Our trial (``run_trial``); with ``--share K`` capped at 1/K of the GPU, in step with K."""
    from study import metrics as M
    from study import record
    from study.search.runner import share_gpu
    from study.trial.run import run_trial

    compiled = "on" if args.worker == "ours-compile" else "off"
    cfg = trial_config(args.model_dir, args.dry_run, args.steps, compiled)
    state: dict = {}
    if args.share > 1:
        share_gpu(1 / args.share)
    callback = _barrier(Path(args.barrier or "."), args.index, args.share, state)
    metrics = run_trial(cfg, out_dir=args.out, callbacks=(callback,))
    env = record.read_env(args.out)
    return {"side": "ours", "tokens_per_s": metrics[M.TRAIN_TOKENS_PER_S],
            "peak_mb": metrics[M.PEAK_MEM_MB], "first_loss": state["first_loss"],
            "lora_params": metrics[M.TRAINABLE_PARAMS], "steps": args.steps,
            "timed_tokens": (args.steps - 1) * cfg.train.batch_size * cfg.data.seq_len,
            "attention": env.get("attn_implementation") or "not recorded",
            "compiled": (env.get("compile") or {}).get("chosen", "not recorded"),
            "released": state["released"], "ended": state["ended"]}


def _hf_rows(cfg, tokenizer) -> list[dict]:
    """Our trial's batches, in its order, as the Trainer's rows (read sequentially)."""
    from study.trial.batches import Batcher
    from study.trial.data import build_data

    data = build_data(cfg.data, tokenizer)
    order = Batcher(data.train, cfg.train.batch_size, cfg.seed, tokenizer.pad_token_id,
                    cfg.train.batching)
    rows = []
    for k in range(cfg.train.steps):
        for i in order.indices(k):
            e = data.train[i]
            rows.append({"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids),
                         "labels": e.labels})
    return rows


def _hf_model(model_dir: Path, cuda: bool):
    import peft
    from transformers import AutoModelForCausalLM

    from lora_impl.inject import expand_targets

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa")
    lora = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
                           target_modules=expand_targets(model, "all-linear"))
    return peft.get_peft_model(model, lora)


def run_hf(args: argparse.Namespace, compiled: bool) -> dict:
    """transformers.Trainer over PEFT at its defaults, but for the batch, steps, bf16 and the
    sequential order of our batches (and ``torch_compile`` when ``compiled``)."""
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from study.trial.resources import PeakMemory, now

    cfg = trial_config(args.model_dir, args.dry_run, args.steps)
    cuda = not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    rows = _hf_rows(cfg, AutoTokenizer.from_pretrained(args.model_dir))
    model = _hf_model(args.model_dir, cuda)
    memory, marks, first = PeakMemory(device), [], {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            memory.resume()

        def on_step_end(self, *a, **k):
            marks.append(now(device))  # after a CUDA sync: the step's kernels have run

    class FirstLoss(Trainer):
        def compute_loss(self, model, inputs, *a, **k):
            out = super().compute_loss(model, inputs, *a, **k)
            first.setdefault("loss", (out[0] if isinstance(out, tuple) else out).detach())
            return out

    compile_args = {"torch_compile": True} if compiled else {}
    if compiled and not cuda:  # the dry run: dynamo without inductor's C++ build
        compile_args["torch_compile_backend"] = "eager"
    targs = TrainingArguments(
        output_dir=str(args.out), per_device_train_batch_size=cfg.train.batch_size,
        max_steps=cfg.train.steps, bf16=cuda, use_cpu=not cuda, disable_tqdm=True,
        train_sampling_strategy="sequential", **compile_args)
    FirstLoss(model=model, args=targs, train_dataset=rows, callbacks=[Clock()]).train()
    batch, seq = DRY_SHAPE if args.dry_run else SHAPE
    return {"side": "hf-compile" if compiled else "hf",
            "tokens_per_s": (len(marks) - 1) * batch * seq / (marks[-1] - marks[0]),
            "peak_mb": memory.peak(), "first_loss": first["loss"].item(),
            "lora_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "steps": args.steps, "attention": model.config._attn_implementation,
            "compiled": "on" if compiled else "off"}


def run_side(args: argparse.Namespace) -> dict:
    """One run of ``args.worker`` (ours, ours-compile, hf, hf-compile; share: ours, K at
    once)."""
    if args.worker in ("ours", "ours-compile", "share"):
        return run_ours(args)
    return run_hf(args, compiled=args.worker == "hf-compile")


# --- the driver: processes, the time budget, the tables -------------------------------------


class Launcher:
    """Starts runs as processes within the time budget; remembers how long each kind took."""

    def __init__(self, work: Path, model_dir: Path, dry: bool, budget_s: float | None) -> None:
        self.work, self.model_dir, self.dry = work, model_dir, dry
        self.end = None if budget_s is None else time.monotonic() + budget_s
        self.took: dict[str, float] = {}
        self.count = 0

    def left(self) -> float:
        return math.inf if self.end is None else self.end - time.monotonic()

    def expected(self, kind: str) -> float:
        return 0.0 if self.dry else self.took.get(kind, EXPECTED_S[kind])

    def run(self, kind: str, worker: str, steps: int, k: int = 1) -> list[dict]:
        """``k`` runs of ``worker`` at once; each result, or {"error": ...} / {"skipped": ...}."""
        if self.left() < self.expected(kind):
            why = (f"skipped: {self.left():.0f} s of the time budget left, "
                   f"~{self.expected(kind):.0f} s needed")
            return [{"skipped": why}] * k
        self.count += 1
        barrier = self.work / f"barrier-{self.count}"
        barrier.mkdir()
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if self.dry else {})}
        started, procs = time.monotonic(), []
        for i in range(k):
            out = self.work / f"run-{self.count}-{worker}-{i}"
            cmd = [sys.executable, __file__, "--worker", worker, "--model-dir", str(self.model_dir),
                   "--out", str(out), "--steps", str(steps), "--share", str(k), "--barrier",
                   str(barrier), "--index", str(i), *(["--dry-run"] if self.dry else [])]
            log = open(f"{out}.log", "w+")  # noqa: SIM115  (closed in _collect)
            procs.append((subprocess.Popen(cmd, cwd=HERE.parent, env=env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True), log))
        stopped = self._wait([proc for proc, _ in procs])
        results = [self._result(proc, log, stopped) for proc, log in procs]
        took = (time.monotonic() - started) * 1.3
        self.took[kind] = max(self.took.get(kind, 0.0), took)
        return results

    def _wait(self, procs: list[subprocess.Popen]) -> str | None:
        """Wait for every process; end the others when one fails (they would wait for it at
        the barrier) or the time budget runs out (each in its own session: compile workers
        too). Why they were ended, or None."""
        began, why = time.monotonic(), None
        while None in (codes := [p.poll() for p in procs]):
            if any(code not in (None, 0) for code in codes):
                why = "ended: another trial of the same K failed"
            elif self.left() <= 0 or time.monotonic() - began > 600:
                why = "ended: the time budget ran out"
            if why:
                for p in procs:
                    if p.poll() is None:
                        os.killpg(p.pid, signal.SIGKILL)
                        p.wait()
                return why
            time.sleep(0.2)
        return None

    @staticmethod
    def _result(proc: subprocess.Popen, log, stopped: str | None) -> dict:
        """A run's JSON line, or its error: the last line it wrote (a traceback's message)."""
        log.seek(0)
        lines = [line for line in log.read().splitlines() if line.strip()]
        log.close()
        if proc.returncode == 0 and lines:
            try:
                return json.loads(lines[-1])
            except ValueError:
                pass
        if proc.returncode == -signal.SIGKILL and stopped:
            return {"error": stopped}
        return {"error": f"exit {proc.returncode}: {(lines or ['(no output)'])[-1][:300]}"}


def one_run(launcher: Launcher, runs: dict, side: str, steps: int) -> None:
    """One run of ``side``, kept in ``runs`` unless the time budget skipped it (the first run of
    a side is kept skipped too: the table says why)."""
    result = launcher.run(side, side, steps)[0]
    if "skipped" not in result or not runs[side]:
        runs[side].append(result)
    print(f"gpu_throughput: {side}: {_brief(result)}", file=sys.stderr, flush=True)


def in_process(model_dir: Path, work: Path, dry: bool, steps: int) -> dict[str, list[dict]]:
    """gpu_check's dry run: ours and the Trainer once each, in this process (the imports are
    paid once; ``--dry-run`` of this script runs every part in processes of their own)."""
    runs: dict[str, list[dict]] = {side: [] for side in LABELS}
    for side in ("ours", "hf"):
        args = argparse.Namespace(worker=side, model_dir=model_dir, out=work / f"in-{side}",
                                  steps=steps, dry_run=dry, share=1, barrier=None, index=0)
        runs[side].append(run_side(args))
    for side in ("hf-compile", "ours-compile"):
        runs[side].append({"skipped": "not in gpu_check's dry run (this script's has it)"})
    return runs


def _brief(result: dict) -> str:
    if "tokens_per_s" in result:
        return f"{result['tokens_per_s']:,.0f} tokens/s, first loss {result['first_loss']:.4f}"
    return result.get("error") or result.get("skipped", "?")


def fitting_ks(cfg, dry: bool) -> tuple[list[int], str]:
    """The K > 1 to measure: powers of two whose K x (estimate + context) fits the GPU's free
    memory, at most the cores and ``MAX_K`` (the dry run: K = 2); and how it was decided."""
    from study.cli import usable_cores
    from study.cost.estimate import estimate_cfg, model_facts

    facts, _ = model_facts(cfg, [cfg.lora.targets])
    need = estimate_cfg(cfg, facts, worker_mb=0.0) + (0.0 if dry else CONTEXT_MB)
    if dry:
        return [2], f"dry run: K = 2 (estimated {need:.0f} MB a trial)"
    torch.cuda.empty_cache()  # what this process cached is the trials' to use
    free = torch.cuda.mem_get_info()[0] / 2**20
    ks = [k for k in (2, 4, 8, 16) if k <= min(MAX_K, usable_cores()) and k * need <= free]
    return ks, (f"estimated {need - CONTEXT_MB:.0f} MB a trial + {CONTEXT_MB:.0f} MB CUDA "
                f"context: K up to {max(ks, default=1)} in the {free:.0f} MB free")


def share(launcher: Launcher, runs: dict, ks: list[int]) -> dict[int, dict]:
    """K -> the K trials' aggregate tokens/s (or why not): K = 1 is part 1's own trial; each
    larger K runs ``max(MIN_SHARE_STEPS, SHARE_STEPS // K)`` steps a trial; the first K that
    fails (out of memory at 1/K of the card) ends the series."""
    done = [r for r in runs["ours"] if "tokens_per_s" in r]
    if not done:
        done = launcher.run("share", "share", launcher_steps(launcher))
    out = {1: _aggregate(done[:1]) if done else {"error": "our trial did not run"}}
    for k in ks:
        steps = max(MIN_SHARE_STEPS, SHARE_STEPS // k)
        if launcher.dry:
            steps = DRY_STEPS
        out[k] = _aggregate(launcher.run("share", "share", steps, k))
        shown = f"{out[k]['aggregate']:,.0f} tokens/s" if "aggregate" in out[k] else out[k]
        print(f"gpu_throughput: {k} trials at once: {shown}", file=sys.stderr, flush=True)
        if "aggregate" not in out[k]:
            break
    return out


def launcher_steps(launcher: Launcher) -> int:
    return DRY_STEPS if launcher.dry else STEPS


def _aggregate(results: list[dict]) -> dict:
    """K runs at once -> the tokens of their timed steps (all but each one's first) over the
    wall time from the first release to the last step (``aggregate``: what the GPU did while
    they shared it); the sum of their own ``train_tokens_per_s``, the slowest, the highest peak.
    One run: its own ``train_tokens_per_s``."""
    bad = sorted((r for r in results if "tokens_per_s" not in r),
                 key=lambda r: r.get("error", "").startswith("ended:"))  # the cause first
    if bad:
        return {key: bad[0][key] for key in ("error", "skipped") if key in bad[0]}
    own = [r["tokens_per_s"] for r in results]
    span = max(r["ended"] for r in results) - min(r["released"] for r in results)
    timed = sum(r["timed_tokens"] for r in results)
    return {"aggregate": timed / span if len(results) > 1 and span > 0 else sum(own),
            "own_sum": sum(own), "slowest": min(own),
            "peak_mb": max(r["peak_mb"] or 0.0 for r in results),
            "overlap_s": min(r["ended"] for r in results) - max(r["released"] for r in results)}


def record_share(shares: dict[int, dict], cfg, dry: bool, gpu: str, path: Path) -> str:
    """Write the measurement where ``--gpus-per-trial auto`` reads it; what was done, in words.
    Not written when a K was skipped for time (an earlier whole measurement is kept)."""
    from study.search import gpu_share

    skipped = [k for k, s in shares.items() if "skipped" in s]
    rates = {k: s["aggregate"] for k, s in shares.items() if "aggregate" in s}
    if skipped or not rates:
        return f"not written to {path}: K = {skipped or list(shares)} not measured"
    config = qwen2_probe.qwen2_config(dry)
    gpu_share.write_measurement(
        path, gpu, gpu_share.model_key(config), cfg.train.batch_size, cfg.data.seq_len, rates,
        model_name="Qwen2-0.5B shape, random init", trial=f"LoRA r{RANK} all-linear, 16-bit",
        failed={k: s["error"] for k, s in shares.items() if "error" in s},
        peak_mb={k: s["peak_mb"] for k, s in shares.items() if "peak_mb" in s},
        measured=time.strftime("%Y-%m-%d %H:%M:%S"), source="make gpu-check")
    k = gpu_share.best_k(rates)
    return f"--gpus-per-trial auto here: {1 / k:g} ({k} trials per GPU); written to {path}"


def _median(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None and "tokens_per_s" in r]
    return statistics.median(values) if values else None


def comparison_table(runs: dict, dry: bool, gpu: str, seq: int) -> tuple[list[str], str, bool]:
    """(markdown lines, one summary line, whether both sides ran and their first losses agree)."""
    config = qwen2_probe.qwen2_config(dry)
    peak = qwen2_probe.dense_bf16_peak(gpu)
    ours_loss = _median(runs["ours"], "first_loss")
    lines = ["| run | runs | tokens/s median [min-max] | MFU | peak MB | first-step loss | "
             "attention, compiled |", "|---|---:|---:|---:|---:|---|---|"]
    parts = []
    for side, label in LABELS.items():
        done = [r for r in runs[side] if "tokens_per_s" in r]
        if not done:
            why = (runs[side] or [{"skipped": "not run"}])[0]
            lines.append(f"| {label} | 0 | {why.get('error') or why.get('skipped')} | | | | |")
            parts.append(f"{side} {'failed' if 'error' in why else 'skipped'}")
            continue
        rates = [r["tokens_per_s"] for r in done]
        tps, loss = statistics.median(rates), _median(done, "first_loss")
        flops = tps * qwen2_probe.flops_per_token(config, seq, done[0]["lora_params"])
        mfu = f"{100 * flops / peak:.1f}%" if peak else "-"
        rel = f" ({(loss - ours_loss) / abs(ours_loss):+.1e} vs ours)" if side != "ours" and \
            ours_loss else ""
        lines.append(f"| {label} | {len(done)} | {tps:,.0f} [{min(rates):,.0f}-{max(rates):,.0f}]"
                     f" | {mfu} | {_median(done, 'peak_mb') or 0:,.0f} | {loss:.5f}{rel} | "
                     f"{done[0].get('attention')}, {done[0].get('compiled')} |")
        parts.append(f"{side} {tps:,.0f} tok/s (MFU {mfu}, peak "
                     f"{_median(done, 'peak_mb') or 0:,.0f} MB, first loss {loss:.4f}{rel})")
    hf_loss, speeds = _median(runs["hf"], "first_loss"), _speedups(runs)
    if speeds:
        lines += ["", speeds]
        parts.append(speeds)
    # ours must run; the Trainer may be skipped for time, not fail; where both ran, their first
    # losses agree (a compiled Trainer's failure is shown, not judged: it is not our GPU path)
    ok = ours_loss is not None and math.isfinite(ours_loss) and \
        not any("error" in r for r in runs["hf"]) and \
        (hf_loss is None or abs(hf_loss - ours_loss) <= LOSS_RTOL * abs(ours_loss))
    return lines, "; ".join(parts), ok


def _speedups(runs: dict) -> str:
    """Ours over each Trainer run, as ratios of the median tokens/s ("" without ours)."""
    ours = _median(runs["ours"], "tokens_per_s")
    ratios = [f"ours / {LABELS[side]}: {ours / other:.2f}x"
              for side in ("hf", "hf-compile", "ours-compile")
              if ours and (other := _median(runs[side], "tokens_per_s"))]
    return f"{'; '.join(ratios)} (median tokens/s)" if ratios else ""


def share_table(shares: dict[int, dict], how: str, written: str) -> tuple[list[str], str]:
    """(markdown lines, one summary line) of the trials-per-GPU part."""
    lines = [how, "", "| trials at once (K) | aggregate tokens/s | sum of the trials' own | "
             "slowest trial | peak MB a trial | timed steps all running |",
             "|---:|---:|---:|---:|---:|---:|"]
    parts = []
    for k, s in shares.items():
        if "aggregate" in s:
            overlap = f"{s['overlap_s']:.1f} s" if k > 1 else "-"
            lines.append(f"| {k} | {s['aggregate']:,.0f} | {s['own_sum']:,.0f} | "
                         f"{s['slowest']:,.0f} | {s['peak_mb']:,.0f} | {overlap} |")
            parts.append(f"K={k} {s['aggregate']:,.0f}")
        else:
            lines.append(f"| {k} | {s.get('error') or s.get('skipped')} | | | | |")
            parts.append(f"K={k} {'failed' if 'error' in s else 'skipped'}")
    lines += ["", written]
    return lines, f"{', '.join(parts)} tok/s; {written}"


def measure(work: Path, dry: bool, budget_s: float | None, quick: bool) -> tuple:
    """(runs per side, shares per K, how the Ks were chosen, the trial's config): ours,
    Trainer, K trials at once, Trainer compiled, ours compiled, then Trainer and ours again
    (the reverse order: the machine's drift cancels), each only when the time budget has room
    for it."""
    steps = DRY_STEPS if dry else STEPS
    launcher = Launcher(work, work / "model", dry, budget_s)
    write_model(launcher.model_dir, dry, steps)
    cfg = trial_config(launcher.model_dir, dry, steps)
    if quick:
        runs = in_process(launcher.model_dir, work, dry, steps)
        return runs, {1: _aggregate(runs["ours"])}, "in process: K = 1 only", cfg
    runs: dict[str, list[dict]] = {side: [] for side in LABELS}
    for side in ("ours", "hf"):
        one_run(launcher, runs, side, steps)
    if launcher.left() > launcher.expected("share") + 20:  # the estimate takes ~10-20 s
        ks, how = fitting_ks(cfg, dry)
    else:
        ks, how = [2], "no time left for the memory estimate: K = 2 is not run"
    shares = share(launcher, runs, ks)
    for side in ("hf-compile", "ours-compile", "hf", "ours"):
        one_run(launcher, runs, side, steps)
    return runs, shares, how, cfg


def run(rows: list, dry: bool, budget_s: float | None, cache: Path, quick: bool = False) -> None:
    """Both parts; their tables printed and one row each appended to ``rows`` (gpu_check's).
    ``quick``: gpu_check's dry run (ours and the Trainer in this process, K = 1 only)."""
    gpu = "CPU (dry run)" if dry else torch.cuda.get_device_name(0)
    if budget_s is not None and budget_s < MIN_BUDGET_S:
        rows.append(("ours against Trainer + PEFT; trials per GPU", f"skipped: {budget_s:.0f} s "
                     f"of the time budget left (at least {MIN_BUDGET_S:.0f} s needed)", True))
        return
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        runs, shares, how, cfg = measure(Path(tmp), dry, budget_s, quick)
        written = record_share(shares, cfg, dry, gpu, cache)
    batch, seq = cfg.train.batch_size, cfg.data.seq_len
    lines, summary, ok = comparison_table(runs, dry, gpu, seq)
    title = (f"ours against Trainer + PEFT ({'tiny Qwen2, dry run' if dry else 'Qwen2-0.5B shape'}"
             f", LoRA r{RANK} all-linear, batch {batch} x {seq}, {'fp32' if dry else 'bf16'}, "
             "SDPA)")
    share_lines, share_summary = share_table(shares, how, written)
    print("\n".join([f"### {title} on {gpu}", "", *lines, "", f"### trials per GPU on {gpu}",
                     "", *share_lines, ""]))
    rows.append((title, summary, ok))
    rows.append((f"trials per GPU ({'dry run' if dry else 'K processes at once'})",
                 share_summary, "aggregate" in shares.get(1, {})))


def main(argv: list[str] | None = None) -> int:
    """A run (``--worker``: one JSON line), or both parts and their tables."""
    parser = argparse.ArgumentParser(prog="python bench/gpu_throughput.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the CPU dry run even with CUDA")
    parser.add_argument("--budget-s", type=float, help="skip what would not end within this")
    parser.add_argument("--cache", type=Path, help="where gpu_share.json is written (default: "
                        "the user's cache; the dry run: the check's temporary one)")
    parser.add_argument("--worker", choices=["ours", "ours-compile", "hf", "hf-compile", "share"],
                        help=argparse.SUPPRESS)
    for name, kind in (("--model-dir", Path), ("--out", Path), ("--steps", int),
                       ("--share", int), ("--barrier", Path), ("--index", int)):
        parser.add_argument(name, type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    from study.search.gpu_share import FILE
    from study.trial.models import cache_root

    user_cache = cache_root()  # where auto reads the measurement; the runs get a cache of their own
    os.environ.setdefault("LORA_STUDY_CACHE", tempfile.mkdtemp(prefix="gpu-throughput-cache-"))
    if args.worker:
        args.dry_run = dry
        print(json.dumps(run_side(args)), flush=True)
        return 0
    cache = args.cache or (cache_root() if dry else user_cache) / FILE
    rows: list[tuple[str, str, bool]] = []
    run(rows, dry, args.budget_s, cache)
    for what, result, ok in rows:
        print(f"| {what} | {result} | {'yes' if ok else '**NO**'} |")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
