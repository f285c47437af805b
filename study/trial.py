"""run_trial(config, report, resume_from) -> metrics: one whole trial, with no Ray in it.

    from study.config import TrialConfig
    from study.trial import run_trial
    metrics = run_trial(TrialConfig(), out_dir="runs/x")

Seed -> load the model (quantized if asked) -> LoRA / full / base -> data -> train, and every
``eval.every`` steps: evaluate, write the trial files, checkpoint, then ``report``. Everything a
trial leaves behind is on disk *before* each report, because a scheduler may end the trial
inside ``report`` (Ray Tune's ASHA does). The last report also carries the test-split metrics
and the decode latencies.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lora_impl import count_parameters, inject_lora, merge, save_adapter, unmerge
from study import metrics as M
from study.config import TrialConfig
from study.data import Example, build_data
from study.evaluate import exact_match, generate, per_skill, perplexity, split_loss
from study.models import load_model
from study.resources import PeakMemory, decode_latency_ms
from study.train import StepStats, autocast_dtype, train_loop

Report = Callable[[dict, "str | None"], None]
CHECKPOINT = "checkpoint"


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, data) -> None:
    _write_text(path, json.dumps(data, indent=2, default=str))


def _finite_or_none(value):
    """NaN/inf -> None, so metrics.json is strict JSON (a browser or jq can read it)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def environment(cfg: TrialConfig, device: torch.device, amp: torch.dtype | None) -> dict:
    """What a result depends on besides its config: versions, hardware, threads, dtype, seed."""
    packages = {}
    for pkg in ("torch", "transformers", "bitsandbytes", "safetensors", "ray", "optuna"):
        try:
            packages[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            packages[pkg] = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "packages": packages,
        "git_commit": commit,
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "compute_dtype": "bf16 autocast" if amp is not None else "fp32",
        "weights": f"{cfg.quant.bits}-bit" + (f" {cfg.quant.type}" if cfg.quant.bits == 4 else ""),
        "seed": cfg.seed,
    }


def _prepare(model: torch.nn.Module, cfg: TrialConfig) -> None:
    if cfg.method == "lora":
        inject_lora(
            model,
            cfg.lora.target_spec,
            rank=cfg.lora.rank,
            alpha=cfg.lora.alpha,
            dropout=cfg.lora.dropout,
            rslora=cfg.lora.rslora,
            init=cfg.lora.init,
        )
    else:
        for param in model.parameters():
            param.requires_grad_(cfg.method == "full")
    if cfg.train.grad_checkpointing and cfg.method != "base":
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph


def _lm_prompts(examples: list[Example], tokenizer, n: int, prefix: int = 32) -> list[Example]:
    """Continuation prompts for LM blocks: the first ``prefix`` tokens, the next as reference."""
    return [
        Example(
            input_ids=e.input_ids,
            labels=e.labels,
            prompt_ids=e.input_ids[:prefix],
            reference=tokenizer.decode(e.input_ids[prefix : 2 * prefix]),
            prompt=tokenizer.decode(e.input_ids[:prefix]),
        )
        for e in examples[:n]
    ]


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer, state: dict) -> None:
    """Trainable weights, optimizer state, RNG state and trial progress, swapped in atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }
    save_file(weights, tmp / "trainable.safetensors")
    opt_tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        opt_tensors["rng.cuda"] = torch.cuda.get_rng_state()
    scalars: dict = {}
    groups = []
    if optimizer is not None:
        sd = optimizer.state_dict()
        groups = sd["param_groups"]
        for idx, st in sd["state"].items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    opt_tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    _write_json(tmp / "state.json", {"param_groups": groups, "scalars": scalars, **state})
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_trainable_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy a checkpoint's trainable.safetensors into the model's parameters of the same names.

    Raises:
        ValueError: the file names a parameter the model does not have.
    """
    weights = load_file(path)
    params = dict(model.named_parameters())
    unknown = [n for n in weights if n not in params]
    if unknown:
        raise ValueError(f"{path} does not match the model: unknown {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer) -> dict:
    """Restore what save_checkpoint wrote; return the saved trial progress."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    load_trainable_weights(model, path / "trainable.safetensors")
    tensors = load_file(path / "optimizer.safetensors")
    torch.set_rng_state(tensors.pop("rng.cpu"))
    cuda_rng = tensors.pop("rng.cuda", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    if optimizer is not None and state["param_groups"]:
        opt_state: dict = {}
        for key, value in tensors.items():
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
        for idx, extra in state["scalars"].items():
            opt_state.setdefault(int(idx), {}).update(extra)
        # safetensors stores tensors contiguous; give each state tensor its parameter's strides
        # again (lora_B is r-major), since fused AdamW walks param and state memory in lockstep.
        params_by_idx = [p for group in optimizer.param_groups for p in group["params"]]
        for idx, entries in opt_state.items():
            param = params_by_idx[idx]
            for name, value in entries.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    entries[name] = torch.empty_strided(
                        param.shape, param.stride(), dtype=value.dtype, device=param.device
                    ).copy_(value)
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    return state


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrialConfig):
    """AdamW over ``params`` (None when nothing trains), fused where torch supports it."""
    if not params:
        return None
    kwargs = {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay}
    try:  # one fused kernel for all parameters (CPU and CUDA since torch 2.4)
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def run_trial(
    config: TrialConfig,
    report: Report | None = None,
    resume_from: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = ".",
    callbacks: tuple[Callable[[int, float], None], ...] = (),
) -> dict:
    """Run one trial end to end; return its last metrics (see the module docstring).

    Args:
        config: the trial.
        report: called as ``report(metrics, checkpoint_dir)`` after every evaluation, with the
            trial files and the checkpoint already written; it may stop the trial by raising.
        resume_from: a checkpoint directory written by an earlier run of the same config.
        out_dir: the trial directory (config.json, metrics.json, curve.jsonl, adapter/,
            examples.json, env.json, checkpoint/).
        callbacks: ``callback(step, loss)`` after every optimizer step (progress bars).

    Raises:
        ValueError: a bad model, target, data size or source. NonFiniteLossError: the loss
            diverged (the message names the step).
    """
    cfg = config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _write_json(out / "config.json", cfg.to_dict())

    t_load = time.perf_counter()
    model, tokenizer = load_model(
        cfg.model.name,
        quant_bits=cfg.quant.bits,
        quant_type=cfg.quant.type,
        double_quant=cfg.quant.double_quant,
    )
    model.to(device)
    _prepare(model, cfg)
    data = build_data(cfg.data, tokenizer)
    load_s = time.perf_counter() - t_load
    amp = autocast_dtype(cfg.train.dtype, device)
    _write_json(out / "env.json", environment(cfg, device, amp))

    pad_id = tokenizer.pad_token_id
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    total_steps = cfg.train.steps or math.ceil(cfg.train.epochs * len(data.train) / per_step)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, cfg)
    generative = cfg.data.task != "lm"
    eval_prompts = data.eval if generative else _lm_prompts(data.eval, tokenizer, 16)
    test_prompts = data.test if generative else _lm_prompts(data.test, tokenizer, 16)

    progress = {
        "step": 0,
        "curve": [],
        "tokens_seen": 0,
        "train_s": 0.0,
        "eval_s": 0.0,
        "recent_losses": [],
    }
    if resume_from is not None:
        progress = {
            k: v
            for k, v in load_checkpoint(Path(resume_from), model, optimizer).items()
            if k in progress
        }
    resumed_from_step = progress["step"] if resume_from is not None else None
    memory = PeakMemory(device)
    stats = StepStats(losses=list(progress["recent_losses"]))
    base_tokens, base_seconds = progress["tokens_seen"], progress["train_s"]
    latest: dict = {}

    def quality(examples: list[Example], prompts: list[Example], prefix: str, n_gen: int | None):
        loss = split_loss(model, examples, pad_id, autocast=amp)
        result = {f"{prefix}loss": loss}
        if prefix == "eval_":
            result[M.EVAL_PPL] = perplexity(loss)
        chosen = prompts if n_gen is None else prompts[:n_gen]
        outputs = generate(model, tokenizer, chosen, cfg.eval.max_new_tokens, autocast=amp)
        if cfg.data.task == "skills":
            result[M.EXACT_MATCH if prefix == "eval_" else M.TEST_EXACT_MATCH] = exact_match(
                outputs, chosen
            )
            result[f"{prefix}exact_match_by_skill"] = per_skill(outputs, chosen)
        return result, list(zip(chosen, outputs))

    def on_eval(step: int) -> None:
        t_eval = time.perf_counter()
        final = step >= total_steps
        n_gen = None if cfg.data.task == "skills" else cfg.eval.num_examples
        metrics, pairs = quality(data.eval, eval_prompts, "eval_", n_gen)
        summary = stats.summary()
        tokens_seen = base_tokens + stats.tokens
        train_s = base_seconds + stats.seconds
        metrics.update(
            {
                M.STEP: step,
                "resumed_from_step": resumed_from_step,
                M.TOKENS_SEEN: tokens_seen,
                M.TRAIN_LOSS: summary["train_loss"],
                M.TRAINABLE_PARAMS: count_parameters(model)[0],
                M.LOAD_S: load_s,
                M.TRAIN_S: train_s,
                M.PEAK_MEM_MB: memory.peak() if stats.step_ms else None,
                M.START_MEM_MB: memory.start_mb,
                M.PEAK_RESERVED_MB: memory.peak_reserved() if stats.step_ms else None,
                M.TRAIN_TOKENS_PER_S: tokens_seen / train_s if train_s else None,
                **{k: summary[k] for k in (M.FWD_MS, M.BWD_MS, M.OPT_MS, M.STEP_MS)},
            }
        )
        if cfg.method == "lora":
            save_adapter(model, out / "adapter", base_model_name_or_path=cfg.model.name)
            metrics[M.ADAPTER_MB] = (
                out / "adapter" / "adapter_model.safetensors"
            ).stat().st_size / 2**20
        else:
            metrics[M.ADAPTER_MB] = sum(p.numel() * p.element_size() for p in trainable) / 2**20
        if final:
            test, test_pairs = quality(data.test, test_prompts, "test_", n_gen)
            metrics.update(test)
            pairs += test_pairs
            metrics.update(_latencies(model, test_prompts, cfg, pad_id, amp))
        progress["eval_s"] += time.perf_counter() - t_eval
        metrics[M.EVAL_S] = progress["eval_s"]
        metrics = {k: _finite_or_none(v) for k, v in metrics.items()}
        curve_point = {
            k: metrics[k]
            for k in (M.STEP, M.TOKENS_SEEN, M.TRAIN_LOSS, M.EVAL_LOSS, M.EVAL_PPL, M.EXACT_MATCH)
            if k in metrics
        }
        progress["curve"] = [p for p in progress["curve"] if p["step"] < step] + [curve_point]
        progress.update(
            step=step, tokens_seen=tokens_seen, train_s=train_s, recent_losses=stats.losses[-10:]
        )
        _write_json(out / "metrics.json", metrics)
        _write_text(out / "curve.jsonl", "".join(json.dumps(p) + "\n" for p in progress["curve"]))
        _write_json(
            out / "examples.json",
            [
                {"prompt": e.prompt, "target": e.reference, "output": o}
                for e, o in pairs[: cfg.eval.num_examples]
            ],
        )
        checkpoint = None
        if cfg.method != "base":
            checkpoint = out / CHECKPOINT
            save_checkpoint(checkpoint, model, optimizer, dict(progress))
        latest.clear()
        latest.update(metrics)
        if report is not None:
            report(dict(metrics), str(checkpoint) if checkpoint else None)

    if cfg.method == "base":  # nothing to train: evaluate the untouched model once
        total_steps = 0
        on_eval(0)
        return latest
    if progress["step"] >= total_steps:  # resumed from the final checkpoint: report it again
        on_eval(progress["step"])
        return latest
    train_loop(
        model,
        data.train,
        cfg.train,
        cfg.seed,
        optimizer,
        total_steps,
        pad_id,
        start_step=progress["step"],
        on_eval=on_eval,
        every=cfg.eval.every,
        callbacks=callbacks,
        memory=memory,
        stats=stats,
    )
    return latest


def _latencies(model, prompts: list[Example], cfg: TrialConfig, pad_id: int, amp) -> dict:
    ids = [e.prompt_ids for e in prompts[: cfg.eval.latency_prompts]]
    unmerged = decode_latency_ms(model, ids, cfg.eval.latency_tokens, pad_id, amp)
    if cfg.method != "lora":
        return {M.LATENCY_UNMERGED: unmerged, M.LATENCY_MERGED: unmerged}
    merge(model)
    try:
        merged = decode_latency_ms(model, ids, cfg.eval.latency_tokens, pad_id, amp)
    finally:
        unmerge(model)
    return {M.LATENCY_UNMERGED: unmerged, M.LATENCY_MERGED: merged}
