"""What a trial computes, read from its data: the shapes of the batches it trains and evaluates on.

    work = workload(cfg, tokenizer)    # cached per data, batch and length settings
    work.largest                       # (rows, padded length, targets): the memory estimate
    work.train.tokens                  # padded tokens over every micro-batch: the time estimate

The same examples, batch order and padding as the loop (``study.trial.data``,
``study.trial.batches``: the trial's ``train.batching``, through its ``Batcher``, so a grouped
batch's width or a packed row's length is the loop's; ``study.trial.evaluate``):
the memory peak is set by the largest micro-batch the trial will really see, and the time by
the padded tokens it will really compute, neither by ``data.seq_len``, which is only a cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from study.config import TrialConfig
from study.trial.evaluate import LOSS_BATCH, early_subset
from study.trial.measure import LM_PREFIX
from study.trial.train import total_steps

MAX_BATCHES = 20_000  # micro-batches scanned (a longer run: the mean of these, extrapolated)


@dataclass(frozen=True)
class Batches:
    """Sums over a sequence of padded batches (rows x length), and their number."""

    count: int = 0
    tokens: float = 0.0  # rows x padded length, summed
    squares: float = 0.0  # rows x padded length squared (attention), summed
    targets: float = 0.0  # positions with a loss (the output head runs there only)

    def add(self, rows: int, length: int, targets: int) -> Batches:
        return Batches(self.count + 1, self.tokens + rows * length,
                       self.squares + rows * length**2, self.targets + targets)

    def __add__(self, other: Batches) -> Batches:
        return Batches(self.count + other.count, self.tokens + other.tokens,
                       self.squares + other.squares, self.targets + other.targets)

    def scaled(self, factor: float) -> Batches:
        return Batches(round(self.count * factor), self.tokens * factor,
                       self.squares * factor, self.targets * factor)


@dataclass(frozen=True)
class Generation:
    """The prompts an evaluation answers: their lengths (study.trial.evaluate batches and pads
    them)."""

    prompt_lengths: tuple[int, ...] = ()


@dataclass(frozen=True)
class Workload:
    steps: int
    train: Batches
    largest: tuple[int, int, int]  # (rows, padded length, targets) of the largest micro-batch
    # each distinct (rows, padded length) trained on, with its most targets: on CPU every new
    # shape leaves memory resident (study.cost.host.SHAPE_SHARE)
    shapes: tuple[tuple[int, int, int], ...]
    eval_loss: Batches
    test_loss: Batches
    evaluations: int  # every eval.every steps and at the end
    early_generation: Generation  # at each evaluation before the last (eval.early_prompts)
    eval_generation: Generation  # at the last
    test_generation: Generation
    latency: tuple[int, ...] = ()  # token counts of the texts the latency runs use
    classes: int = 0  # classify: the labels (the score head's outputs); else 0
    reference: Batches = Batches()  # preference: the reference's forwards outside evaluation


_CACHE: dict[tuple, Workload] = {}


def workload(cfg: TrialConfig, tokenizer) -> Workload:
    """The batches ``cfg`` trains and evaluates on (see the module docstring)."""
    from study.trial.data import build_data

    t = cfg.train
    key = (repr(cfg.data), repr(cfg.eval), cfg.method, t.batch_size, t.grad_accum, t.steps,
           t.epochs, t.batching, cfg.seed, cfg.dpo.reference, id(tokenizer))
    if key not in _CACHE:
        data = build_data(cfg.data, tokenizer)
        steps = total_steps(t, len(data.train))
        train, largest, shapes = _train(data.train, cfg, steps)
        generative = cfg.data.task != "lm"
        test_generation = _generation(data.test, cfg, generative)
        latency = test_generation.prompt_lengths  # the test split's first prompts (trial.measure)
        if cfg.data.task == "classify":
            latency = tuple(len(e.input_ids) for e in data.test)
        if cfg.data.task == "preference" and cfg.data.source != "builtin":
            test_generation = Generation()  # answers shown from the eval split only
        _CACHE[key] = Workload(
            steps=steps,
            train=train,
            largest=largest,
            shapes=shapes,
            eval_loss=_loss(data.eval, cfg),
            test_loss=_loss(data.test, cfg),
            evaluations=1 if cfg.method == "base" else math.ceil(steps / cfg.eval.every),
            early_generation=_generation(data.eval, cfg, generative, cfg.eval.early_prompts),
            eval_generation=_generation(data.eval, cfg, generative),
            test_generation=test_generation,
            latency=latency[: cfg.eval.latency_prompts],
            classes=len(data.info.get("labels", ())),
            reference=_reference(data, cfg, train),
        )
    return _CACHE[key]


def _targets(example) -> int:
    """Positions with a loss: a preference example's in both its responses."""
    from study.trial.data import IGNORE

    labels = example.labels[1:] + (example.rejected_labels or [None])[1:]
    return sum(label not in (IGNORE, None) for label in labels)


def _train(examples, cfg: TrialConfig, steps: int
           ) -> tuple[Batches, tuple[int, int, int], tuple[tuple[int, int, int], ...]]:
    """The training micro-batches' sums, the largest one, and each distinct shape."""
    from study.trial.batches import Batcher

    targets = [_targets(e) for e in examples]  # pack: the same targets (each first token's none)
    if cfg.train.batching == "pack" and examples and examples[0].label is not None:
        return Batches(), (0, 0, 0), ()  # refused by the trial (check_mode): nothing to estimate
    batcher = Batcher(examples, cfg.train.batch_size, cfg.seed, pad_id=0,
                      mode=cfg.train.batching)  # shapes only: no pad id needed
    wanted = steps * cfg.train.grad_accum
    total, best, shapes = Batches(), (0, 0, 0, 0), {}
    for k in range(min(wanted, MAX_BATCHES)):
        rows, length = batcher.shape(k)
        n_targets = sum(targets[i] for i in batcher.indices(k))
        total = total.add(rows, length, n_targets)
        best = max(best, (rows * length, rows, length, n_targets))
        shapes[rows, length] = max(shapes.get((rows, length), 0), n_targets)
    if wanted > MAX_BATCHES:
        total = total.scaled(wanted / MAX_BATCHES)
    return total, best[1:], tuple((r, n, t) for (r, n), t in shapes.items())


def _loss(examples, cfg: TrialConfig) -> Batches:
    """An evaluation's loss passes over a split: ``LOSS_BATCH`` rows at a time; a preference
    split's pairs (both rows), and on the built-in set its chosen rows for exact match."""
    if cfg.data.task == "preference":
        pairs = _pairs(examples)
        return _rows(examples, pairs) if cfg.data.source == "builtin" else pairs
    return _rows(examples, Batches())


def _rows(examples, total: Batches) -> Batches:
    for i in range(0, len(examples), LOSS_BATCH):
        chunk = examples[i : i + LOSS_BATCH]
        total = total.add(len(chunk), max(len(e.input_ids) for e in chunk),
                          sum(_targets(e) for e in chunk))
    return total


def _pairs(examples, total: Batches = Batches()) -> Batches:
    """Pair batches of ``PAIRS_PER_BATCH`` examples, two rows each (study.trial.dpo)."""
    from study.trial.dpo import PAIRS_PER_BATCH

    for i in range(0, len(examples), PAIRS_PER_BATCH):
        chunk = examples[i : i + PAIRS_PER_BATCH]
        width = max(max(len(e.input_ids), len(e.rejected_ids)) for e in chunk)
        total = total.add(2 * len(chunk), width, sum(_targets(e) for e in chunk))
    return total


def _reference(data, cfg: TrialConfig, train: Batches) -> Batches:
    """DPO's reference forwards outside evaluation, without gradients: ``dpo.reference=disabled``,
    every training micro-batch once more; ``cached``, every pair of the splits once before
    training (``study.trial.reference``; the eval and test splits only for a base trial)."""
    if cfg.data.task != "preference":
        return Batches()
    if cfg.dpo.reference == "disabled":
        return train
    splits = (data.eval, data.test) if cfg.method == "base" else (data.train, data.eval, data.test)
    total = Batches()
    for split in splits:
        total = _pairs(split, total)
    return total


def _generation(examples, cfg: TrialConfig, generative: bool, early: int | None = None,
                ) -> Generation:
    """The prompts ``study.trial.measure`` answers at an evaluation: every one of the skills
    task, the first ``eval.num_examples`` otherwise; before the last evaluation, the first
    ``eval.early_prompts`` of those; none for classify (its answer is the loss pass's)."""
    if cfg.data.task == "classify":
        return Generation()
    if cfg.data.task == "preference" and cfg.data.source != "builtin":  # shown at every one
        examples, early = examples[: cfg.eval.num_examples], None
    elif cfg.data.task not in ("skills", "preference"):
        examples = examples[: cfg.eval.num_examples]
    if early is not None:
        examples = early_subset(examples, early)
    if generative:
        return Generation(tuple(len(e.prompt_ids) for e in examples))
    return Generation(tuple(min(LM_PREFIX, len(e.input_ids)) for e in examples))
