"""The training loop: plain PyTorch, no Ray, no HF Trainer, in nanoGPT's visible order.

    for step: set lr -> micro-batches (forward, loss / accum, backward) -> clip -> optimizer step
              -> zero_grad(set_to_none=True) -> log -> evaluate/report every N -> stop check

The loss is computed only where there are targets (``study.trial.logits``): the backbone's
hidden states at target positions go through the output head, so SFT prompts and padding never
produce logits and no full (B, T, vocab) fp32 logits tensor exists; over many targets the head
and cross-entropy run in chunks, each recomputed in backward.

Inside a micro-batch nothing is read back from the device (on CUDA each read stalls the GPU):
the batch's token count and target positions are computed on the host (``to_device``), the
loss is summed on the device and read once per step, and on CUDA the phases are timed by CUDA
events, read once they have completed (``StepTimer``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from study.sections_run import TrainConfig
from study.trial.batches import Batcher
from study.trial.classify import classification_loss
from study.trial.data import Example
from study.trial.logits import chunked_cross_entropy, target_hidden, target_index
from study.trial.resources import PeakMemory, now
from study.trial.steptimer import RECENT_LOSSES as RECENT_LOSSES  # re-exported
from study.trial.steptimer import StepStats, StepTimer


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


def causal_lm_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean"
) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy over positions whose label is not IGNORE; (loss, #targets)."""
    hidden, targets, _ = target_hidden(model, batch)
    return chunked_cross_entropy(model, hidden, targets, reduction), int(targets.numel())


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of a batch: over its labels' classes for a classifier (classify
    examples carry ``class_labels``), else next-token cross-entropy."""
    if "class_labels" in batch:
        return classification_loss(model, batch)
    return causal_lm_loss(model, batch)[0]


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


def _micro_batch(examples: list[Example], order: Batcher, k: int, pad_id: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    # micro-batch k in the trial's train.batching (CPU tensors, n_tokens among them): ``order``
    # holds the examples and the pad id, a pure function of (seed, k) (study.trial.batches)
    batch = order.micro_batch(k)
    return batch  # still on the host: to_device moves it


def to_device(
    batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[dict[str, torch.Tensor], int]:
    """(the host's micro-batch on ``device``, its real token count). What the step needs to
    know of the batch is taken here from the CPU tensors, so that the step reads nothing back
    from the device: the real tokens (``n_tokens`` when the batching gives it, else the
    attention mask's ones, else every position) and, for a causal LM's loss, the flat indices
    of the positions with a target (``target_index``)."""
    batch = dict(batch)
    n_tokens = batch.pop("n_tokens", None)
    if n_tokens is not None:
        tokens = int(n_tokens)
    elif "attention_mask" in batch:
        tokens = int(batch["attention_mask"].sum())
    else:
        tokens = batch["input_ids"].numel()
    if "labels" in batch and "class_labels" not in batch:  # a classifier has no token targets
        batch["target_index"] = target_index(batch["labels"])
    if device.type != "cuda":
        return {name: tensor.to(device) for name, tensor in batch.items()}, tokens
    # from pinned memory a copy does not block the host (from pageable memory it may wait for
    # the stream: the GPU would drain); the pinned blocks are cached and not reused before it
    return {name: tensor.pin_memory().to(device, non_blocking=True)
            for name, tensor in batch.items()}, tokens


def _optimizer_step(optimizer: torch.optim.Optimizer, grad_scaler: torch.amp.GradScaler,
                    params: list[torch.nn.Parameter], grad_clip: float) -> None:
    """Clip the gradients (fp16: unscaled first), step, set them to None."""
    grad_scaler.unscale_(optimizer)  # clip the true gradients
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    grad_scaler.step(optimizer)  # fp16: skipped when the gradients overflowed
    grad_scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _step_loss(loss_sum: torch.Tensor, step: int) -> float:
    """The step's loss: its one read from the device (a sync point), checked finite."""
    loss = loss_sum.item()
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite training loss ({loss}) at step {step + 1}", step=step + 1
        )
    return loss


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
              memory: PeakMemory | None, timer: StepTimer) -> None:
    """``on_eval(step)`` outside the measured training phase (``memory`` paused around it),
    the steps' timings recorded first (the report reads them)."""
    timer.flush()
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
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] = batch_loss,
) -> StepStats:
    """Train from ``start_step`` to ``total_steps``; ``on_eval(step)`` every ``every`` steps (the
    eval config's) and at the last, outside the measured phase (``memory`` paused around it).
    ``loss_fn(model, batch)``: a micro-batch's loss (``batch_loss``, or it compiled: see
    ``study.trial.compiling``).
    ``amp``: the autocast dtype (None: plain fp32; see ``study.trial.precision``); fp16 trains
    with a gradient scaler whose state ``scaler`` carries across resumes (a dict, updated in place).

    Raises:
        NonFiniteLossError: the loss at some step is NaN or inf.
    """
    device = next(model.parameters()).device
    order = Batcher(examples, cfg.batch_size, seed, pad_id, cfg.batching)
    params = [p for p in model.parameters() if p.requires_grad]
    stats = stats or StepStats()
    timer = StepTimer(device, stats, now)
    grad_scaler = _grad_scaler(device, amp, scaler)
    _train_mode(model, memory)
    for step in range(start_step, total_steps):
        set_lr(optimizer, lr_at(step, total_steps, cfg))
        timer.start()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # as Python's floats
        for micro in range(cfg.grad_accum):
            batch = _micro_batch(examples, order, step * cfg.grad_accum + micro, pad_id, device)
            batch, tokens = to_device(batch, device)
            timer.lap()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(model, batch)
            timer.lap("fwd")
            grad_scaler.scale(loss / cfg.grad_accum).backward()
            timer.lap("bwd")
            loss_sum += loss.detach().double() / cfg.grad_accum
            stats.tokens += tokens
        step_loss = _step_loss(loss_sum, step)
        timer.lap()
        _optimizer_step(optimizer, grad_scaler, params, cfg.grad_clip)
        timer.stop()
        _log(stats, callbacks, step + 1, step_loss)
        _keep_scaler_state(grad_scaler, scaler)
        if on_eval is not None and ((step + 1) % every == 0 or step + 1 == total_steps):
            _evaluate(model, on_eval, step + 1, memory, timer)
    return timer.flush()  # the stats, every step recorded
