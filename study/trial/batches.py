"""Examples -> padded batches, and which examples each micro-batch of the training loop holds.

    order = BatchOrder(len(data.train), batch_size, seed)
    batch = collate([data.train[i] for i in order.indices(k)], pad_id)   # micro-batch k
    prompts = collate_prompts(data.eval[:8], pad_id)                     # for generation
"""

from __future__ import annotations

import torch

from study.trial.data import IGNORE, Example


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``labels`` (IGNORE on padding) and ``attention_mask``; for
    classify examples also ``class_labels`` (B,)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        if e.labels:  # classify examples have no token targets
            labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
    if examples[0].label is not None:
        batch["class_labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    return batch


def collate_prompts(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation."""
    width = max(len(e.prompt_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.prompt_ids)
        input_ids[row, width - n :] = torch.tensor(e.prompt_ids)
        mask[row, width - n :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class BatchOrder:
    """Which examples micro-batch ``k`` holds: a seeded reshuffle every epoch.

    The order is a pure function of (seed, k), so a resumed trial continues with exactly the
    batches an uninterrupted one would have seen, with no sampler state to save.
    """

    def __init__(self, n_examples: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._perms[epoch]

    def indices(self, k: int) -> list[int]:
        """Example indices of micro-batch ``k`` (0-based, counting across epochs)."""
        out = []
        for pos in range(k * self.batch_size, (k + 1) * self.batch_size):
            epoch, offset = divmod(pos, self.n)
            out.append(self._perm(epoch)[offset])
        return out
