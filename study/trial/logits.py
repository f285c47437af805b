"""The output head at the positions that have a target, and the cross-entropy there.

    index = target_index(labels)                     # host: flat indices of target positions
    hidden, targets, keep = target_hidden(model, batch)   # (M, d), (M,), the (B, T-1) mask
    logits, targets, keep = target_logits(model, batch)   # (M, vocab): evaluation's
    loss = chunked_cross_entropy(model, hidden, targets)  # training's: in checkpointed chunks

SFT prompts and padding never reach the output head, and no (B, T, vocab) logits tensor exists.
The training loop gives ``target_index`` with its batch (computed before the batch moves), so
the rows are gathered without reading the mask's count back from the device; evaluation gives
none and selects them by the mask. Over more targets than ``LOGITS_CHUNK_BYTES`` of fp32 logits
hold, the head and cross-entropy run chunk by chunk, each chunk recomputed in backward, so the
logits of only one chunk exist at a time; within one chunk the computation is the plain one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from study.trial.data import IGNORE

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


def target_index(labels: torch.Tensor) -> torch.Tensor:
    """The positions of a (B, T) batch that have a target (the next token's label is not
    IGNORE), as flat indices into its B * T positions, row-major: the rows the boolean mask of
    ``target_hidden`` selects, in its order. Computed from the host's labels, before the batch
    moves, it spares the device the read of the mask's count (a sync)."""
    keep = labels[:, 1:] != IGNORE
    rows, cols = keep.nonzero(as_tuple=True)
    # over (B, T), not (B, T-1): hidden[:, :-1] is not contiguous, flattening it would copy
    return rows * labels.shape[1] + cols


def target_hidden(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the backbone's hidden states at the positions that have a target (M, d), those targets
    (M,), the mask (B, T-1) of those positions). With ``batch["target_index"]`` (the training
    loop's, ``target_index``) the rows are gathered by index, no read from the device; without
    it (evaluation) by the mask."""
    hidden = model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"), use_cache=False,
    ).last_hidden_state  # (B, T, d)
    labels = batch["labels"]
    keep = labels[:, 1:] != IGNORE  # position t predicts token t + 1
    index = batch.get("target_index")
    if index is None:
        return hidden[:, :-1][keep], labels[:, 1:][keep], keep  # a boolean index: a sync
    flat = hidden.reshape(-1, hidden.shape[-1])  # a view: the backbone's output is contiguous
    return flat.index_select(0, index), labels.reshape(-1).index_select(0, index + 1), keep


def target_logits(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits at the positions that have a target (M, vocab), those targets (M,), the mask
    (B, T-1) that selected them). The output head runs at those positions only."""
    hidden, targets, keep = target_hidden(model, batch)
    return head_logits(model, hidden), targets, keep  # (M, vocab), M = #targets


# The most fp32 logits the training loss holds at once, in bytes: over more target positions the
# output head and cross-entropy run in chunks of this many bytes' worth of positions, each one
# recomputed in backward rather than kept (a 150k vocabulary's logits are 0.6 MB a position)
LOGITS_CHUNK_BYTES = 256 * 2**20


def chunk_positions(vocab: int) -> int:
    """Target positions per chunk of the loss over ``vocab`` outputs: ``LOGITS_CHUNK_BYTES`` of
    fp32 logits (>= 1). The memory model counts the same (``study.cost.activations``)."""
    return max(1, LOGITS_CHUNK_BYTES // (4 * vocab))


def loss_chunk(model: nn.Module) -> int:
    """Target positions per chunk of ``model``'s loss (``chunk_positions`` of its head)."""
    vocab = getattr(model.get_output_embeddings(), "out_features", None)
    return chunk_positions(vocab or model.config.vocab_size)


def _head_cross_entropy(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                        reduction: str) -> torch.Tensor:
    return F.cross_entropy(head_logits(model, hidden).float(), targets, reduction=reduction)


def chunked_cross_entropy(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                          reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the output head's logits for ``hidden`` (M, d) against ``targets`` (M,),
    at most ``loss_chunk(model)`` positions' logits at a time, each chunk's recomputed in
    backward (``torch.utils.checkpoint``). One chunk is the plain computation, bitwise; more
    are summed per chunk (``mean``: the sum over M)."""
    chunk = loss_chunk(model)
    if targets.numel() <= chunk:
        return _head_cross_entropy(model, hidden, targets, reduction)
    part = "none" if reduction == "none" else "sum"
    losses = [  # split, not slices: one gradient for ``hidden`` in backward, not one per chunk
        checkpoint(_head_cross_entropy, model, h, t, part, use_reentrant=False)
        for h, t in zip(hidden.split(chunk), targets.split(chunk), strict=True)
    ]
    if reduction == "none":
        return torch.cat(losses)
    total = torch.stack(losses).sum()
    return total / targets.numel() if reduction == "mean" else total
