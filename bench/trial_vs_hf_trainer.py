"""Our training loop + lora_impl against transformers' Trainer + PEFT on the same LoRA trial.

    python bench/trial_vs_hf_trainer.py                 # 3 alternating rounds, 40 steps each
    python bench/trial_vs_hf_trainer.py --rounds 1 --steps 10

Same model (bundled SmolLM2-135M-Instruct), data (400 examples of the skills task, prompts
masked), LoRA (all-linear, r8, alpha 16), batch 8, steps, schedule (linear warm-up, then cosine
decay to 10% of the lr: Trainer's ``cosine_with_min_lr``; our warm-up starts one step further
in), AdamW (ours fused, one of the levers the comparison allows; Trainer's ``adamw_torch``),
gradient clipping and dtype (auto: the faster of fp32 and bf16 autocast, measured). Trainer's
logging, evaluation and saving are off. Each run is its own process (peak RSS is per process);
tokens/s counts real (non-padding) tokens; peak memory is the RSS high-water mark over ``train``
only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.common import machine, machine_line  # noqa: E402


def _setup(args):
    import torch

    from study.config import TrialConfig
    from study.trial.data import build_data
    from study.trial.models import load_model
    from study.trial.precision import matmul_shape, resolve

    cfg = TrialConfig.from_dict({"train.steps": args.steps, "seed": 0})
    model, tok = load_model(cfg.model.name)
    data = build_data(cfg.data, tok)
    tokens = cfg.train.batch_size * cfg.data.seq_len
    amp = resolve(cfg.train.dtype, torch.device("cpu"), matmul_shape(model, tokens)).amp
    return cfg, model, tok, data, amp


def run_ours(args) -> dict:
    """lora_impl + study.trial.train.train_loop, no evaluation."""
    import torch

    from lora_impl import inject_lora
    from study.trial.resources import PeakMemory
    from study.trial.train import make_optimizer, train_loop

    cfg, model, tok, data, amp = _setup(args)
    torch.manual_seed(0)
    inject_lora(model, cfg.lora.target_spec, rank=cfg.lora.rank, alpha=cfg.lora.alpha)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.train)
    memory = PeakMemory(torch.device("cpu"))
    t0 = time.perf_counter()
    stats = train_loop(
        model,
        data.train,
        cfg.train,
        cfg.seed,
        optimizer,
        args.steps,
        tok.pad_token_id,
        every=cfg.eval.every,
        memory=memory,
        amp=amp,
    )
    seconds = time.perf_counter() - t0
    return {
        "impl": "ours",
        "tokens": stats.tokens,
        "seconds": seconds,
        "tokens_per_s": stats.tokens / seconds,
        "peak_mem_mb": memory.peak(),
        "start_mem_mb": memory.start_mb,
        "final_loss": sum(stats.losses) / len(stats.losses),
    }


def run_hf(args) -> dict:
    """PEFT + transformers.Trainer with the same settings."""
    import peft
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from lora_impl.inject import expand_targets
    from study.trial.resources import PeakMemory

    cfg, model, tok, data, amp = _setup(args)
    torch.manual_seed(0)
    lora = peft.LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=0.0,
        target_modules=expand_targets(model, cfg.lora.target_spec),
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, lora)
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in data.train]
    base_collator = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, padding=True)
    counted = {"tokens": 0}

    def collator(features):
        batch = base_collator(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    bf16 = amp is not None  # the precision ours runs in (train.dtype, auto measured)
    targs = TrainingArguments(
        output_dir=str(HERE / "out" / "hf_trainer_tmp"),
        per_device_train_batch_size=8,
        max_steps=args.steps,
        learning_rate=cfg.train.lr,
        lr_scheduler_type="cosine_with_min_lr",  # ours decays to min_lr_ratio x lr, not 0
        lr_scheduler_kwargs={"min_lr_rate": cfg.train.min_lr_ratio},
        warmup_steps=cfg.train.warmup,
        weight_decay=0.0,
        max_grad_norm=cfg.train.grad_clip,
        optim="adamw_torch",
        bf16=bf16,
        use_cpu=True,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    memory = PeakMemory(torch.device("cpu"))

    class Measure(TrainerCallback):
        def on_train_begin(self, *a, **k):
            memory.resume()

    trainer = Trainer(
        model=model, args=targs, train_dataset=rows, data_collator=collator, callbacks=[Measure()]
    )
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    return {
        "impl": "hf",
        "tokens": counted["tokens"],
        "seconds": seconds,
        "tokens_per_s": counted["tokens"] / seconds,
        "peak_mem_mb": memory.peak(),
        "start_mem_mb": memory.start_mb,
        "final_loss": out.training_loss,
    }


def main() -> None:
    """A worker run (``--worker``), or every round of both implementations and the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_ours(args) if args.worker == "ours" else run_hf(args)))
        return
    runs = []
    for rnd in range(args.rounds):
        for impl in ("ours", "hf") if rnd % 2 == 0 else ("hf", "ours"):
            res = subprocess.run(
                [sys.executable, __file__, "--worker", impl, "--steps", str(args.steps)],
                cwd=HERE.parent,
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                sys.exit(f"{impl} failed:\n{res.stderr[-3000:]}")
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(
                f"round {rnd + 1} {impl}: {runs[-1]['tokens_per_s']:.0f} tok/s, "
                f"peak {runs[-1]['peak_mem_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    lines = [
        f"Machine: {machine_line(machine())}",
        f"{args.rounds} rounds alternating, {args.steps} steps each; median [min-max].",
        "",
        "| loop | tokens/s | train s | start MB | peak MB | mean train loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for impl, label in (("ours", "study.trial.train + lora_impl"), ("hf", "HF Trainer + PEFT")):
        rs = [r for r in runs if r["impl"] == impl]

        def cell(key, fmt="{:.0f}", rs=rs):
            vals = [r[key] for r in rs]
            return (
                f"{fmt.format(statistics.median(vals))} [{fmt.format(min(vals))}-"
                f"{fmt.format(max(vals))}]"
            )

        lines.append(
            f"| {label} | {cell('tokens_per_s')} | {cell('seconds')} | "
            f"{cell('start_mem_mb')} | {cell('peak_mem_mb')} | "
            f"{cell('final_loss', '{:.3f}')} |"
        )
    ratios = [
        o["tokens_per_s"] / h["tokens_per_s"]
        for o, h in zip(
            [r for r in runs if r["impl"] == "ours"], [r for r in runs if r["impl"] == "hf"]
        )
    ]
    lines += [
        "",
        f"Speed-up (paired per round): {statistics.median(ratios):.2f}x "
        f"[{min(ratios):.2f}-{max(ratios):.2f}]",
    ]
    text = "\n".join(lines)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "trial_vs_hf_trainer.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
