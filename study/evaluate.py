"""Quality metrics: token loss and perplexity on a split, exact match of greedy generations.

loss = split_loss(model, data.eval, pad_id)                # mean over target tokens
outputs = generate(model, tokenizer, data.eval, max_new_tokens=24)
score = exact_match(outputs, data.eval)                    # fraction in [0, 1]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from study.data import Example, collate, collate_prompts, end_of_turn_id
from study.tasks.skills import is_correct
from study.train import causal_lm_loss


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def split_loss(
    model: nn.Module,
    examples: list[Example],
    pad_id: int,
    batch_size: int = 16,
    autocast: torch.dtype | None = None,
) -> float:
    """Mean next-token cross-entropy over every target token of ``examples``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            batch = {
                k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()
            }
            with _autocast(device, autocast):
                loss, n = causal_lm_loss(model, batch, reduction="sum")
            total, count = total + float(loss), count + n
    finally:
        model.train(was_training)
    return total / max(count, 1)


def perplexity(loss: float) -> float:
    """exp(loss), capped to stay finite for a diverged model."""
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    max_new_tokens: int,
    batch_size: int = 50,
    autocast: torch.dtype | None = None,
) -> list[str]:
    """Greedy completions of each example's prompt, cut at the end-of-turn token."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    stop = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for i in range(0, len(examples), batch_size):
            batch = {
                k: v.to(device)
                for k, v in collate_prompts(examples[i : i + batch_size], pad_id).items()
            }
            with _autocast(device, autocast):
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=stop,
                )
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                cut = next((j for j, t in enumerate(row) if t in stop), len(row))
                outputs.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def exact_match(outputs: list[str], examples: list[Example]) -> float:
    """Fraction of outputs equal to their reference after normalisation."""
    if not examples:
        return float("nan")
    hits = sum(is_correct(o, e.reference or "") for o, e in zip(outputs, examples, strict=True))
    return hits / len(examples)


def per_skill(outputs: list[str], examples: list[Example]) -> dict[str, float]:
    """Exact match per skill (skills task)."""
    skills = sorted({e.skill for e in examples if e.skill})
    return {
        s: exact_match(
            [o for o, e in zip(outputs, examples) if e.skill == s],
            [e for e in examples if e.skill == s],
        )
        for s in skills
    }
