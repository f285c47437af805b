"""DPO: the preference loss of a pair batch, with TRL's conventions (``trl.DPOTrainer``).

    loss_fn = make_loss(cfg.dpo)            # the training loop's loss_fn(model, batch)
    logps, nll = sequence_logps(model, batch)   # per row: summed target log-probs

A pair batch (``study.trial.batches.pair_batch``) holds B chosen rows, then the B rejected rows
of the same examples, as TRL concatenates them. A row's log-probability is the sum over its
response tokens (the end-of-turn token included) of log p(token | prefix). With
``batch["ref_logps"]`` (the reference's, cached before training: ``study.trial.reference``) the
reference is that; without it, the same model with its adapters disabled, computed here without
gradients. For each pair, with r = log pi(y|x) - log ref(y|x):

    sigmoid: -log sigmoid(beta (r_chosen - r_rejected))
    ipo:     (r_chosen / n_chosen - r_rejected / n_rejected - 1 / (2 beta))^2   (n: response tokens)

and the rewards beta r (detached), as TRL logs them; the loss is the mean over the pairs, plus
``dpo.sft_weight`` times the chosen responses' mean token loss (TRL's "sft" loss type: the mean
over every chosen target token of the batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lora_impl import disable_adapters
from study import metrics as M
from study.sections_run import DpoConfig
from study.trial.batches import pair_batch
from study.trial.data import Example
from study.trial.logits import chunked_cross_entropy, target_hidden, target_index

PAIRS_PER_BATCH = 16  # 32 rows: evaluation's LOSS_BATCH


@dataclass
class PairScores:
    """A pair batch scored: per pair the loss, the rewards and the policy's log-probabilities;
    and per chosen target token its negative log-likelihood (the SFT loss of the chosen)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_nll: torch.Tensor


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per row: the summed log-probabilities of its targets (R,) and their count (R,); per
    target: its negative log-likelihood (M,) and its row (M,)). The rows come from
    ``batch["target_index"]`` (computed on the host: no read from the device)."""
    hidden, targets, _ = target_hidden(model, batch)
    nll = chunked_cross_entropy(model, hidden, targets, reduction="none")  # fp32, (M,)
    rows = batch["target_index"] // batch["input_ids"].shape[1]
    count = batch["input_ids"].shape[0]
    logps = torch.zeros(count, dtype=nll.dtype, device=nll.device).index_add(0, rows, -nll)
    lengths = torch.zeros(count, dtype=nll.dtype, device=nll.device).index_add(
        0, rows, torch.ones_like(nll))
    return logps, lengths, nll, rows


def reference_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference's log-probability of each row: the batch's cached ``ref_logps``, or the
    model with its adapters disabled (the base), without gradients."""
    if "ref_logps" in batch:
        return batch["ref_logps"]
    with torch.no_grad(), disable_adapters(model):
        return sequence_logps(model, batch)[0]


def pair_losses(logps: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor,
                cfg: DpoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per pair loss, chosen rewards, rejected rewards) of rows [chosen..., rejected...]."""
    ratios = logps - ref.to(logps.dtype)
    chosen, rejected = ratios.chunk(2)
    if cfg.loss == "sigmoid":
        losses = -F.logsigmoid(cfg.beta * (chosen - rejected))
    else:  # ipo: log-ratios averaged per response token (TRL's, confirmed with IPO's authors)
        n_chosen, n_rejected = lengths.clamp(min=1).chunk(2)
        losses = (chosen / n_chosen - rejected / n_rejected - 1 / (2 * cfg.beta)) ** 2
    return losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach()


def score_pairs(model: nn.Module, batch: dict[str, torch.Tensor], cfg: DpoConfig) -> PairScores:
    """A pair batch's losses, rewards and log-probabilities (module docstring)."""
    logps, lengths, nll, rows = sequence_logps(model, batch)
    ref = reference_logps(model, batch)
    losses, chosen_rewards, rejected_rewards = pair_losses(logps, ref, lengths, cfg)
    chosen_logps, rejected_logps = logps.detach().chunk(2)
    return PairScores(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps,
                      nll.detach()[rows < logps.shape[0] // 2])


def make_loss(cfg: DpoConfig) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """The training loop's ``loss_fn``: the mean DPO loss over a pair batch's pairs, plus the
    weighted SFT loss of its chosen responses (module docstring)."""

    def dpo_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logps, lengths, nll, rows = sequence_logps(model, batch)
        loss = pair_losses(logps, reference_logps(model, batch), lengths, cfg)[0].mean()
        if cfg.sft_weight:
            loss = loss + cfg.sft_weight * nll[rows < logps.shape[0] // 2].mean()
        return loss

    return dpo_loss


def pair_batches(examples: list[Example], pad_id: int, device: torch.device, size: int):
    """The examples in pair batches of ``size`` on ``device``, with their target indices."""
    for start in range(0, len(examples), size):
        batch = pair_batch(examples[start:start + size], pad_id)
        batch["target_index"] = target_index(batch["labels"])
        yield {name: tensor.to(device) for name, tensor in batch.items()}


@torch.no_grad()
def pair_metrics(model: nn.Module, examples: list[Example], pad_id: int, cfg: DpoConfig,
                 amp: torch.dtype | None, split: str) -> dict[str, float]:
    """The DPO metrics of a split (``study.metrics``; test_* for the test split): the mean loss,
    the share of pairs whose chosen reward is above the rejected one, the mean reward margin,
    the mean log-probabilities; and ``{split}_loss``, the chosen responses' mean token loss."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: list[PairScores] = []
    try:
        for batch in pair_batches(examples, pad_id, device, PAIRS_PER_BATCH):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                parts.append(score_pairs(model, batch, cfg))
    finally:
        model.train(was_training)
    cat = {name: torch.cat([getattr(p, name) for p in parts]).double()
           for name in PairScores.__dataclass_fields__}
    margin = cat["chosen_rewards"] - cat["rejected_rewards"]
    values = {M.DPO_LOSS: cat["losses"].mean(), M.REWARD_ACCURACY: (margin > 0).double().mean(),
              M.REWARD_MARGIN: margin.mean(), M.CHOSEN_LOGP: cat["chosen_logps"].mean(),
              M.REJECTED_LOGP: cat["rejected_logps"].mean()}
    out = {(name if split == "eval" else M.TEST_OF[name]): float(v) for name, v in values.items()}
    out[f"{split}_loss"] = float(cat["chosen_nll"].mean())
    return out
