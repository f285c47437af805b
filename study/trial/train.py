"""The training loop: plain PyTorch, no Ray, no HF Trainer, in nanoGPT's visible order.

    for step: set lr -> micro-batches (forward, loss / accum, backward) -> clip -> optimizer step
              -> zero_grad(set_to_none=True) -> log -> evaluate/report every N -> stop check

The loss is computed only where there are targets: the backbone's hidden states at target
positions go through the output head, so SFT prompts and padding never produce logits and no
full (B, T, vocab) fp32 logits tensor exists.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from study.sections import TrainConfig
from study.trial.batches import BatchOrder, collate
from study.trial.classify import classification_loss
from study.trial.data import IGNORE, Example
from study.trial.resources import PeakMemory, now


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig):
    """AdamW over ``params`` (None when nothing trains), fused where torch supports it."""
    if not params:
        return None
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    try:  # one fused kernel for all parameters (CPU and CUDA since torch 2.4)
        optimizer = torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(params, **kwargs)
    for group in optimizer.param_groups:
        # a group's learning rate relative to cfg.lr (LoRA+ gives B ratio x lr): the schedule
        # scales it, never replaces it (``train`` sets lr_at(step) * lr_scale at each step)
        group["lr_scale"] = group["lr"] / cfg.lr
    return optimizer


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step, and so does ``step``."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


def total_steps(cfg: TrainConfig, examples: int) -> int:
    """``train.steps``, or the optimizer steps of ``train.epochs`` over ``examples``."""
    return cfg.steps or math.ceil(cfg.epochs * examples / (cfg.batch_size * cfg.grad_accum))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


# What a causal LM's own forward does to the head's output, by config attribute (transformers'
# modeling code): Gemma 2/3 soft-cap it, Cohere multiplies by a scale, Granite divides by one.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits for hidden states (..., d): its output head, then the logit
    post-processing its own forward applies (``LOGIT_POSTPROCESSING``)."""
    logits = model.get_output_embeddings()(hidden)
    config = model.config
    if cap := getattr(config, "final_logit_softcapping", None):
        logits = torch.tanh(logits / cap) * cap
    if (scale := getattr(config, "logit_scale", None)) is not None:
        logits = logits * scale
    if (scaling := getattr(config, "logits_scaling", None)) is not None:
        logits = logits / scaling
    return logits


def target_logits(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits at the positions that have a target (M, vocab), those targets (M,), the mask
    (B, T-1) that selected them). The output head runs at those positions only."""
    hidden = model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (B, T, d)
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    keep = targets != IGNORE
    logits = head_logits(model, hidden[:, :-1][keep])  # (M, vocab), M = #targets
    return logits, targets[keep], keep


def causal_lm_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean"
) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy over positions whose label is not IGNORE; (loss, #targets)."""
    logits, targets, _ = target_logits(model, batch)
    loss = F.cross_entropy(logits.float(), targets, reduction=reduction)
    return loss, int(targets.numel())


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of a batch: over its labels' classes for a classifier (classify
    examples carry ``class_labels``), else next-token cross-entropy."""
    if "class_labels" in batch:
        return classification_loss(model, batch)
    return causal_lm_loss(model, batch)[0]


RECENT_LOSSES = 10  # the training loss reported is the mean of the last this many steps' losses


@dataclass
class StepStats:
    """Timings and counts of the training steps run so far (this process)."""

    fwd_ms: list[float] = field(default_factory=list)
    bwd_ms: list[float] = field(default_factory=list)
    opt_ms: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    # the first step of this process (allocator, kernel choice, autocast's weight cache: not the
    # steady state), counted in tokens and seconds but left out of the throughput
    warm_tokens: int = 0
    warm_seconds: float = 0.0

    def timed(self) -> tuple[int, float]:
        """(tokens, seconds) of the steps after the first: what the throughput is made of (all
        steps when only one ran)."""
        if len(self.step_ms) > 1:
            return self.tokens - self.warm_tokens, self.seconds - self.warm_seconds
        return self.tokens, self.seconds

    def summary(self) -> dict[str, float]:
        """Median step-phase times, tokens/s and the recent training loss."""
        med = {
            k: statistics.median(v) if v else float("nan")
            for k, v in (
                ("fwd_ms", self.fwd_ms),
                ("bwd_ms", self.bwd_ms),
                ("opt_ms", self.opt_ms),
                ("step_ms", self.step_ms),
            )
        }
        tokens, seconds = self.timed()
        med["train_tokens_per_s"] = tokens / seconds if seconds else float("nan")
        recent = self.losses[-RECENT_LOSSES:]
        med["train_loss"] = sum(recent) / len(recent) if recent else float("nan")
        return med


class StepTimer:
    """The clock of one training step at a time: its phases and its whole, into ``StepStats``."""

    def __init__(self, device: torch.device, stats: StepStats) -> None:
        self.device, self.stats = device, stats
        self.begun = self.last = 0.0
        self.spent = {"fwd": 0.0, "bwd": 0.0}
        self.tokens_before = 0

    def start(self) -> None:
        """A step begins: the clock's first read of it; its phases start from zero."""
        self.begun = self.last = now(self.device)
        self.spent = {"fwd": 0.0, "bwd": 0.0}
        self.tokens_before = self.stats.tokens

    def lap(self, phase: str | None = None) -> None:
        """Read the clock; the time since the last read counts to ``phase`` (None: to none)."""
        t = now(self.device)
        if phase is not None:
            self.spent[phase] = self.spent[phase] + t - self.last
        self.last = t

    def stop(self) -> None:
        """The step ends: the time since the last read is the optimizer's; record the step."""
        end = now(self.device)
        stats, took = self.stats, end - self.begun
        stats.fwd_ms.append(self.spent["fwd"] * 1e3)
        stats.bwd_ms.append(self.spent["bwd"] * 1e3)
        stats.opt_ms.append((end - self.last) * 1e3)
        stats.step_ms.append(took * 1e3)
        stats.seconds += took
        if len(stats.step_ms) == 1:
            stats.warm_tokens, stats.warm_seconds = stats.tokens - self.tokens_before, took


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each parameter group's learning rate: ``lr`` times the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # no scale: a checkpoint from before it


def _grad_scaler(device: torch.device, amp: torch.dtype | None,
                 scaler: dict | None) -> torch.amp.GradScaler:
    # fp16's range underflows small gradients: scale the loss up, unscale before clipping, skip
    # a step whose gradients overflowed (torch.amp.GradScaler; a no-op for bf16 and fp32)
    grad_scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if scaler and grad_scaler.is_enabled():
        grad_scaler.load_state_dict(scaler)
    return grad_scaler


def _keep_scaler_state(grad_scaler: torch.amp.GradScaler, scaler: dict | None) -> None:
    if scaler is not None and grad_scaler.is_enabled():
        scaler.update(grad_scaler.state_dict())  # the checkpoint written in on_eval has it


def _micro_batch(examples: list[Example], order: BatchOrder, k: int, pad_id: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    batch = collate([examples[i] for i in order.indices(k)], pad_id)
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite training loss ({loss}) at step {step + 1}", step=step + 1
        )


def _log(stats: StepStats, callbacks: tuple[Callable[[int, float], None], ...], step: int,
         loss: float) -> None:
    stats.losses.append(loss)
    for callback in callbacks:
        callback(step, loss)


def _train_mode(model: nn.Module, memory: PeakMemory | None) -> None:
    """The training phase (re)starts: the model in training mode, ``memory`` measuring."""
    model.train()
    if memory is not None:
        memory.resume()


def _evaluate(model: nn.Module, on_eval: Callable[[int], None], step: int,
              memory: PeakMemory | None) -> None:
    """``on_eval(step)`` outside the measured training phase (``memory`` paused around it)."""
    if memory is not None:
        memory.pause()
    on_eval(step)
    _train_mode(model, memory)


def train_loop(
    model: nn.Module,
    examples: list[Example],
    cfg: TrainConfig,
    seed: int,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    pad_id: int,
    start_step: int = 0,
    on_eval: Callable[[int], None] | None = None,
    *,
    every: int,
    callbacks: tuple[Callable[[int, float], None], ...] = (),
    memory: PeakMemory | None = None,
    stats: StepStats | None = None,
    amp: torch.dtype | None = None,
    scaler: dict | None = None,
) -> StepStats:
    """Train from ``start_step`` to ``total_steps``; ``on_eval(step)`` every ``every`` steps (the
    eval config's) and at the last, outside the measured phase (``memory`` paused around it).
    ``amp``: the autocast dtype (None: plain fp32; see ``study.trial.precision``); fp16 trains
    with a gradient scaler whose state ``scaler`` carries across resumes (a dict, updated in place).

    Raises:
        NonFiniteLossError: the loss at some step is NaN or inf.
    """
    device = next(model.parameters()).device
    order = BatchOrder(len(examples), cfg.batch_size, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    stats = stats or StepStats()
    timer = StepTimer(device, stats)
    grad_scaler = _grad_scaler(device, amp, scaler)
    _train_mode(model, memory)
    for step in range(start_step, total_steps):
        set_lr(optimizer, lr_at(step, total_steps, cfg))
        timer.start()
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            batch = _micro_batch(examples, order, step * cfg.grad_accum + micro, pad_id, device)
            timer.lap()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = batch_loss(model, batch)
            timer.lap("fwd")
            grad_scaler.scale(loss / cfg.grad_accum).backward()
            timer.lap("bwd")
            step_loss += loss.item() / cfg.grad_accum  # a sync point, once per micro-batch
            stats.tokens += int(batch["attention_mask"].sum())
        _check_finite(step_loss, step)
        timer.lap()
        grad_scaler.unscale_(optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        grad_scaler.step(optimizer)
        grad_scaler.update()
        optimizer.zero_grad(set_to_none=True)
        timer.stop()
        _log(stats, callbacks, step + 1, step_loss)
        _keep_scaler_state(grad_scaler, scaler)
        if on_eval is not None and ((step + 1) % every == 0 or step + 1 == total_steps):
            _evaluate(model, on_eval, step + 1, memory)
    return stats
