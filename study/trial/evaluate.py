"""Quality metrics: token loss and perplexity on a split, exact match of greedy generations.

loss = split_loss(model, data.eval, pad_id)                # mean over target tokens
outputs = generate(model, tokenizer, data.eval, max_new_tokens=24)
score = exact_match(outputs, data.eval)                    # fraction in [0, 1]
loss, outputs = loss_and_answers(model, tokenizer, data.eval, 24)   # the same, cheaper

``loss_and_answers`` gets the greedy answers without generating most of them. The loss pass
already computes, at every response position, the model's most likely next token given the
reference so far. Where that is the reference token at every position (and the end-of-turn
token after it), greedy decoding provably produces exactly the reference: each step's input
is then the reference prefix. Only the other prompts are generated. A trained model gets most
answers right, so most of the generation (which costs as much as the loss pass again, the
prompt's forward included) is skipped; the answers are the same as generating all of them,
up to floating-point ties between two tokens (batching and padding differ between the passes,
as they do between any two batch sizes). Where answers are judged by exact match (``judge``),
a generated answer stops as soon as its text can no longer be correct
(``study.trial.tasks.skills.could_match``): a wrong answer is known wrong after a token or two, and
a batch ends when none of its answers can still become right. The first ``shown`` answers (the
ones ``examples.json`` shows) are generated in full.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from study.trial.batches import collate, collate_prompts
from study.trial.data import Example, end_of_turn_id
from study.trial.logits import target_logits
from study.trial.tasks.skills import could_match, is_correct

LOSS_BATCH = 32  # examples per forward of the loss (12% faster than 16 on 2 CPU cores)
GENERATE_BATCH = 50  # prompts per batched generation


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def split_loss(
    model: nn.Module,
    examples: list[Example],
    pad_id: int,
    batch_size: int = LOSS_BATCH,
    autocast: torch.dtype | None = None,
) -> float:
    """Mean next-token cross-entropy over every target token of ``examples``."""
    return _scored(model, examples, pad_id, batch_size, autocast, stops=None)[0]


@torch.no_grad()
def _scored(model, examples, pad_id, batch_size, autocast, stops: list[int] | None,
            ) -> tuple[float, list[bool]]:
    """(mean loss, per example: is the most likely token the target at every position). With
    ``stops``, a stop token predicted where the target is the final stop also counts."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    matched = [False] * len(examples) if stops is not None else []
    stop_ids = torch.tensor(stops or [], device=device)
    # batches of similar lengths: less padding to compute (about 10% on the skills splits)
    order = sorted(range(len(examples)), key=lambda j: len(examples[j].input_ids))
    try:
        for i in range(0, len(order), batch_size):
            chunk = order[i : i + batch_size]
            batch = {
                k: v.to(device) for k, v in collate([examples[j] for j in chunk], pad_id).items()
            }
            with _autocast(device, autocast):
                logits, targets, keep = target_logits(model, batch)
                loss = F.cross_entropy(logits.float(), targets, reduction="sum")
            total, count = total + float(loss), count + targets.numel()
            if stops is not None:
                pred = logits.argmax(-1)
                ok = (pred == targets) | (torch.isin(pred, stop_ids) & torch.isin(targets,
                                                                                  stop_ids))
                rows = keep.nonzero()[:, 0]
                wrong = torch.zeros(keep.shape[0], dtype=torch.long, device=device)
                wrong.index_add_(0, rows, (~ok).long())
                for j, ok_row in zip(chunk, (wrong == 0).tolist(), strict=True):
                    matched[j] = ok_row
    finally:
        model.train(was_training)
    return total / max(count, 1), matched


def perplexity(loss: float) -> float:
    """exp(loss), capped to stay finite for a diverged model."""
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    max_new_tokens: int,
    batch_size: int = GENERATE_BATCH,
    autocast: torch.dtype | None = None,
    references: list[str] | None = None,
) -> list[str]:
    """Greedy completions of each example's prompt, cut at the end-of-turn token; with
    ``references``, each stops once it can no longer match its reference (a shorter, wrong
    answer: see the module docstring)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    stop = _stops(tokenizer)
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for i in range(0, len(examples), batch_size):
            batch = {
                k: v.to(device)
                for k, v in collate_prompts(examples[i : i + batch_size], pad_id).items()
            }
            criteria = None
            if references is not None:
                criteria = _cannot_match(tokenizer, batch["input_ids"].shape[1],
                                         references[i : i + batch_size])
            with _autocast(device, autocast):
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=stop,
                    stopping_criteria=criteria,
                )
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                cut = next((j for j, t in enumerate(row) if t in stop), len(row))
                outputs.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def _cannot_match(tokenizer, start: int, references: list[str]):
    """transformers' per-row stopping criterion: the answer so far can no longer be correct."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class CannotMatch(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            rows = input_ids[:, start:].tolist()
            done = [not could_match(tokenizer.decode(row, skip_special_tokens=True), ref)
                    for row, ref in zip(rows, references, strict=True)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([CannotMatch()])


def early_subset(examples: list[Example], n: int) -> list[Example]:
    """The first ``n`` examples: a fixed subset that keeps the split's mix (the skills task is
    in round-robin order, so every prefix is balanced; other data is shuffled when split)."""
    return list(examples[:n])


def loss_and_answers(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    max_new_tokens: int,
    answer: list[Example] | None = None,
    autocast: torch.dtype | None = None,
    judge: bool = False,
    shown: int = 0,
) -> tuple[float, list[str]]:
    """The loss on ``examples`` and the greedy answers to the prompts of ``answer`` (a subset of
    ``examples``, default all of them), generating only those the loss pass does not already
    determine (see the module docstring). ``judge``: the answers are judged by exact match
    against their references, so a wrong one may stop early, except the first ``shown``."""
    answer = examples if answer is None else answer
    stops = _stops(tokenizer)
    loss, matched = _scored(model, examples, tokenizer.pad_token_id, LOSS_BATCH, autocast, stops)
    known = {}
    for e, ok in zip(examples, matched, strict=True):
        response = e.input_ids[len(e.prompt_ids) :]
        # greedy decoding emits at most max_new_tokens, the end-of-turn token included
        if ok and len(response) - 1 <= max_new_tokens:
            known[id(e)] = tokenizer.decode(response[:-1], skip_special_tokens=True)
    rest = [e for e in answer if id(e) not in known]
    full = {id(e) for e in answer[:shown]} if judge else {id(e) for e in rest}
    whole = [e for e in rest if id(e) in full]
    judged = [e for e in rest if id(e) not in full]
    generated = dict(zip(map(id, whole), generate(model, tokenizer, whole, max_new_tokens,
                                                  autocast=autocast)))
    generated |= dict(zip(map(id, judged), generate(
        model, tokenizer, judged, max_new_tokens, autocast=autocast,
        references=[e.reference or "" for e in judged])))
    return loss, [known.get(id(e), generated.get(id(e))) for e in answer]


def _stops(tokenizer) -> list[int]:
    return sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})


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
