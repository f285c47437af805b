"""Examples -> batches, and which examples each micro-batch of the training loop holds.

    batcher = Batcher(data.train, batch_size, seed, pad_id, mode)        # train.batching
    batch = batcher.micro_batch(k)                # micro-batch k: CPU tensors, n_tokens
    batch = collate(data.eval[:8], pad_id)        # evaluation: always right-padded
    prompts = collate_prompts(data.eval[:8], pad_id)                     # for generation
    pairs = pair_batch(data.eval[:8], pad_id)     # preference: chosen rows, then rejected rows

The modes of ``train.batching`` (``study.sections_run.BATCHINGS``):
- ``pad``: ``BatchOrder``'s examples, right-padded to the longest of the micro-batch;
- ``group``: the same seeded permutation per epoch, sorted by length within windows of
  ``GROUP_WINDOW`` micro-batches and cut into batches whose order in the window is shuffled
  (``GroupedOrder``): batches of similar lengths, so less padding;
- ``pack``: ``BatchOrder``'s examples end to end in one row (``pack``), no padding at all.
Every micro-batch is a pure function of (seed, k), and every epoch holds each example once.
A preference example is one unit of the order and two rows of its micro-batch (``pair_batch``).
``batch_shape`` is the one rule for a micro-batch's (rows, width), which the cost model
(``study.cost.workload``) and env.json's ``padding_share`` read too.
"""

from __future__ import annotations

import torch

from study.sections_run import BATCHINGS
from study.trial.data import IGNORE, Example

# micro-batches sorted by length together in ``group`` mode (as transformers' LengthGroupedSampler,
# whose "megabatches" are 50 batches): enough to find similar lengths, few enough that the
# epoch's order stays random at a coarser grain
GROUP_WINDOW = 50


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


def rejected(example: Example) -> Example:
    """A preference example's rejected pair as an example of its own."""
    return Example(input_ids=example.rejected_ids, labels=example.rejected_labels)


def pair_batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Preference examples as ``collate``'s rows: the chosen pairs, then the rejected ones (TRL's
    concatenated order), and their reference's log-probabilities ``ref_logps`` (2B,) in the same
    order where the examples carry them (``study.trial.reference``)."""
    batch = collate([*examples, *map(rejected, examples)], pad_id)
    if examples[0].ref_logps is not None:
        batch["ref_logps"] = torch.tensor([e.ref_logps[0] for e in examples]
                                          + [e.ref_logps[1] for e in examples])
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
            perm = torch.randperm(self.n, generator=gen).tolist()
            self._perms = {epoch: self._arrange(epoch, perm)}
        return self._perms[epoch]

    def _arrange(self, epoch: int, perm: list[int]) -> list[int]:
        """The epoch's order from its seeded permutation (here: the permutation itself)."""
        return perm

    def indices(self, k: int) -> list[int]:
        """Example indices of micro-batch ``k`` (0-based, counting across epochs)."""
        out = []
        for pos in range(k * self.batch_size, (k + 1) * self.batch_size):
            epoch, offset = divmod(pos, self.n)
            out.append(self._perm(epoch)[offset])
        return out


class GroupedOrder(BatchOrder):
    """``group`` mode's order: each epoch's seeded permutation (``BatchOrder``'s), sorted by
    length within windows of ``GROUP_WINDOW`` micro-batches and cut into micro-batches whose
    order within the window is shuffled by a seeded generator.

    The windows follow the loop's micro-batch grid (a micro-batch may begin in one epoch and end
    in the next when ``batch_size`` does not divide the examples), so every micro-batch wholly
    inside an epoch is one run of similar lengths; the epoch still holds each example once.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        super().__init__(len(lengths), batch_size, seed)
        self.lengths = lengths

    def _arrange(self, epoch: int, perm: list[int]) -> list[int]:
        size = self.batch_size
        head = min((-epoch * self.n) % size, self.n)  # ends the micro-batch the last epoch began
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 50_021)
        out = perm[:head]
        for start in range(head, self.n, GROUP_WINDOW * size):
            # stable sort: equal lengths keep the permutation's (seeded) order
            window = sorted(perm[start : start + GROUP_WINDOW * size], key=self.lengths.__getitem__)
            slots = [min(size, len(window) - i) for i in range(0, len(window), size)]
            runs: list[list[int]] = [[] for _ in slots]
            taken = 0
            # the shortest run goes to a random slot, the next to another, ...; a last slot
            # shorter than a batch (it ends in the next epoch) keeps its place and size
            for slot in torch.randperm(len(slots), generator=gen).tolist():
                runs[slot] = window[taken : taken + slots[slot]]
                taken += slots[slot]
            out += [i for run in runs for i in run]
        return out


def check_mode(mode: str, examples: list[Example]) -> None:
    """ValueError (one line) unless ``mode`` is a ``train.batching`` these examples can use:
    ``pack`` has no rows for a classifier's score head to read (its last token per row)."""
    if mode not in BATCHINGS:
        raise ValueError(f"train.batching must be one of {', '.join(BATCHINGS)}, got {mode!r}")
    if mode == "pack" and examples and examples[0].label is not None:
        raise ValueError("train.batching=pack is not supported for data.task=classify (the score "
                         "head reads each row's last token): use pad or group")


def batch_shape(lengths: list[int], mode: str) -> tuple[int, int]:
    """(rows, width) of a micro-batch of examples of these lengths in ``mode``: one row of them
    all end to end (pack), else one row each, padded to the longest (pad, group)."""
    if mode == "pack":
        return 1, sum(lengths)
    return len(lengths), max(lengths)


def pack(examples: list[Example]) -> dict[str, torch.Tensor]:
    """The examples end to end in one row: ``input_ids``, ``labels`` and ``position_ids``
    restarting at 0 for each example, and no ``attention_mask``, so transformers masks attention
    block-causally (``masking_utils.find_packed_sequence_indices``): no example sees another.
    Each example's first label is IGNORE, so the last token of one never predicts the first of
    the next; the targets are exactly those of the padded batch (``collate``)."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in examples:
        ids += e.input_ids
        labels += [IGNORE, *e.labels[1:]]
        positions += range(len(e.input_ids))
    return {"input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long)}


class Batcher:
    """Micro-batch ``k`` of the training loop in a ``train.batching`` mode (module docstring):
    a pure function of (seed, k), so a resumed trial sees exactly the batches of an
    uninterrupted one."""

    def __init__(self, examples: list[Example], batch_size: int, seed: int, pad_id: int,
                 mode: str = "pad") -> None:
        check_mode(mode, examples)
        self.examples, self.pad_id, self.mode = examples, pad_id, mode
        self.pairs = bool(examples) and examples[0].rejected_ids is not None
        # a pair's width is its longer row's; its real tokens are both rows'
        self.lengths = [max(len(e.input_ids), len(e.rejected_ids or ())) for e in examples]
        self.real = [len(e.input_ids) + len(e.rejected_ids or ()) for e in examples]
        self.order = (GroupedOrder(self.lengths, batch_size, seed) if mode == "group"
                      else BatchOrder(len(examples), batch_size, seed))

    def indices(self, k: int) -> list[int]:
        """Example indices of micro-batch ``k`` (0-based, counting across epochs)."""
        return self.order.indices(k)

    def shape(self, k: int) -> tuple[int, int]:
        """(rows, width) of micro-batch ``k``, from the lengths alone (``batch_shape``)."""
        rows, width = batch_shape([self.lengths[i] for i in self.indices(k)], self.mode)
        return (2 * rows if self.pairs else rows), width

    def micro_batch(self, k: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``k`` as CPU tensors: ``collate``'s (pad, group) or ``pack``'s, and
        ``n_tokens``, its real (not padding) token count as a 0-d int64 tensor."""
        indices = self.indices(k)
        chosen = [self.examples[i] for i in indices]
        if self.pairs:
            batch = pair_batch(chosen, self.pad_id)
        else:
            batch = pack(chosen) if self.mode == "pack" else collate(chosen, self.pad_id)
        batch["n_tokens"] = torch.tensor(sum(self.real[i] for i in indices), dtype=torch.long)
        return batch

    def padding_share(self, count: int) -> float | None:
        """Padded slots / all token slots over micro-batches 0 .. ``count - 1`` (None: none);
        0 for pack."""
        slots = real = 0
        for k in range(count):
            rows, width = self.shape(k)
            slots, real = slots + rows * width, real + sum(self.real[i] for i in self.indices(k))
        return 1 - real / slots if slots else None
