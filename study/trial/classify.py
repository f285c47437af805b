"""The classify task's quality: cross-entropy, accuracy and F1 of a split, and its confusion matrix.

    loss, predicted = predict(model, data.eval, pad_id)      # one forward per batch
    scores(predicted, [e.label for e in data.eval], names)   # accuracy, f1_macro, ...

The definitions are scikit-learn's (tests/test_classify_metrics.py checks them against
``accuracy_score`` and ``f1_score`` to 1e-12): a class's F1 is 2 TP / (2 TP + FP + FN), 0 when
it is neither true nor predicted anywhere; ``f1_macro`` is the mean and ``f1_weighted`` the mean
weighted by true counts over the classes that are true or predicted at least once (scikit-learn's
default labels); ``f1_by_class`` has every class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from study import metrics as M
from study.trial.batches import collate
from study.trial.data import Example

BATCH = 32  # examples per forward (as the other tasks' loss pass, study.trial.evaluate.LOSS_BATCH)


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the label logits against ``batch["class_labels"]``."""
    logits = model(batch["input_ids"], batch["attention_mask"])
    return F.cross_entropy(logits.float(), batch["class_labels"])


@torch.no_grad()
def predict(model: nn.Module, examples: list[Example], pad_id: int, batch_size: int = BATCH,
            autocast: torch.dtype | None = None) -> tuple[float, list[int]]:
    """(mean cross-entropy, the predicted label of each example, in order)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    predicted = [0] * len(examples)
    # batches of similar lengths: less padding to compute
    order = sorted(range(len(examples)), key=lambda j: len(examples[j].input_ids))
    try:
        for i in range(0, len(order), batch_size):
            chunk = order[i : i + batch_size]
            batch = {k: v.to(device)
                     for k, v in collate([examples[j] for j in chunk], pad_id).items()}
            with torch.autocast(device.type, dtype=autocast or torch.float32,
                                enabled=autocast is not None):
                logits = model(batch["input_ids"], batch["attention_mask"]).float()
            total += float(F.cross_entropy(logits, batch["class_labels"], reduction="sum"))
            for j, label in zip(chunk, logits.argmax(-1).tolist(), strict=True):
                predicted[j] = label
    finally:
        model.train(was_training)
    return total / max(len(examples), 1), predicted


def confusion(predicted: list[int], true: list[int], classes: int) -> list[list[int]]:
    """Counts: row = true label, column = predicted label."""
    table = [[0] * classes for _ in range(classes)]
    for p, t in zip(predicted, true, strict=True):
        table[t][p] += 1
    return table


def scores(predicted: list[int], true: list[int], names: list[str], prefix: str = "",
           ) -> dict:
    """accuracy, f1_macro, f1_weighted and f1_by_class (name -> F1) under ``prefix``
    (``""`` for the eval split, ``"test_"`` for the test split); the test split also gets
    ``test_confusion``."""
    if not true:
        return {}
    table = confusion(predicted, true, len(names))
    support = [sum(row) for row in table]
    predicted_n = [sum(row[k] for row in table) for k in range(len(names))]
    f1 = []
    for k in range(len(names)):
        tp = table[k][k]
        denominator = support[k] + predicted_n[k]  # 2 TP + FP + FN
        f1.append(2.0 * tp / denominator if denominator else 0.0)
    seen = [k for k in range(len(names)) if support[k] or predicted_n[k]]
    out = {
        prefix + M.ACCURACY: sum(table[k][k] for k in range(len(names))) / len(true),
        prefix + M.F1_MACRO: sum(f1[k] for k in seen) / len(seen),
        prefix + M.F1_WEIGHTED: sum(f1[k] * support[k] for k in seen) / len(true),
        prefix + M.F1_BY_CLASS: dict(zip(names, f1, strict=True)),
    }
    if prefix == "test_":
        out[M.TEST_CONFUSION] = table
    return out


def quality(model: nn.Module, examples: list[Example], pad_id: int, names: list[str],
            split: str, autocast: torch.dtype | None = None, shown: int = 0,
            ) -> tuple[dict, list[tuple[Example, str]]]:
    """``{split}_loss`` and the scores of ``split`` ("eval" or "test"), and the first
    ``shown`` examples with their predicted label names (examples.json)."""
    loss, predicted = predict(model, examples, pad_id, autocast=autocast)
    prefix = "" if split == "eval" else "test_"
    result = {f"{split}_loss": loss,
              **scores(predicted, [e.label for e in examples], names, prefix)}
    return result, [(e, names[p]) for e, p in zip(examples[:shown], predicted)]
