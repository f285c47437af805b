"""Whether a model can train on packed rows (``train.batching=pack``), asked of the model itself.

A packed row holds several examples end to end with ``position_ids`` restarting at 0 for each
and no attention mask (``study.trial.batches.pack``). transformers' ``create_causal_mask`` then
masks attention block-causally (``masking_utils.find_packed_sequence_indices``) and RoPE or
learned position embeddings read the restarting positions: Llama, Qwen2, Mistral, GPT-2,
GPT-NeoX, ... But not every architecture does (OPT takes its positions from the attention mask;
Bloom's ALiBi builds its own mask), and which one a checkpoint runs is known only once it is
loaded. So the loaded model is asked, on two tiny rows, before a trial writes anything:

- isolation: the second example's hidden states must not change when the first example's
  tokens do (same shapes, so a model that keeps them apart gives the same numbers);
- positions: they must match that example run alone, up to the rounding of a different shape.
"""

from __future__ import annotations

import torch
from torch import nn

from study.sections_run import BATCHINGS
from study.trial.batches import check_mode
from study.trial.data import Example

FIRST, SECOND = 9, 7  # the probe's two examples' lengths
# isolation: a model that keeps the examples apart gives the same numbers (masked scores are
# exactly 0); positions: a different shape's rounding is ~1e-2 of the scale in bf16, a model
# that ignores position_ids is off by ~1
ISOLATION_TOL, POSITION_TOL = 1e-4, 0.1


def attn_implementation(model: nn.Module) -> str:
    """The attention the model really runs (transformers' config: sdpa, eager, flash_attention_2,
    flex_attention, ...; transformers 5 loads with sdpa where the architecture supports it)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


def _hidden(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    out = model.base_model(input_ids=ids, position_ids=positions, use_cache=False)
    return out.last_hidden_state.float()


@torch.no_grad()
def packing_errors(model: nn.Module) -> tuple[float, float]:
    """(isolation, positions): the second example's largest change in a packed row when the
    first example's tokens change, and its largest difference from itself run alone, each
    relative to the largest hidden value (both ~0 where packing is supported)."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    pad = getattr(model.config, "pad_token_id", None)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, max(FIRST, SECOND)), generator=gen)
    if pad is not None:  # no pad token at a row's ends: GPT-2 would warn of missing padding mask
        ids[ids == pad] = (pad + 1) % vocab
    first, other, second = ids[0, :FIRST], ids[1, :FIRST], ids[2, :SECOND]
    positions = torch.cat([torch.arange(FIRST), torch.arange(SECOND)])[None].to(device)
    was_training = model.training
    model.eval()  # no dropout: the same inputs give the same numbers
    try:
        packed = _hidden(model, torch.cat([first, second])[None].to(device), positions)
        changed = _hidden(model, torch.cat([other, second])[None].to(device), positions)
        alone = _hidden(model, second[None].to(device), None)
    finally:
        model.train(was_training)
    scale = alone.abs().max().clamp_min(1e-6)
    isolation = (packed[0, FIRST:] - changed[0, FIRST:]).abs().max() / scale
    position = (packed[0, FIRST:] - alone[0]).abs().max() / scale
    return float(isolation), float(position)


def check_batching(mode: str, model: nn.Module, model_name: str, examples: list[Example],
                   ) -> None:
    """ValueError (one line) where ``train.batching`` cannot run: a bad mode, pack for a
    classifier (``batches.check_mode``), or pack on a model that mixes packed examples or
    ignores their positions (``packing_errors``)."""
    check_mode(mode, examples)
    if mode != "pack":
        return
    isolation, position = packing_errors(model)
    if isolation > ISOLATION_TOL or position > POSITION_TOL:
        others = ", ".join(m for m in BATCHINGS if m != "pack")
        raise ValueError(
            f"train.batching=pack needs a model that keeps packed examples apart; "
            f"{model_name} ({model.config.model_type}, {attn_implementation(model)} attention) "
            f"does not (isolation {isolation:.2g}, positions {position:.2g}): use {others}"
        )
