"""The classify task's accuracy and F1 against scikit-learn's, on random predictions."""

from __future__ import annotations

import random

import pytest

from study import metrics as M
from study.trial.classify import confusion, scores

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(6))
def test_scores_equal_scikit_learn(seed):
    rng = random.Random(seed)
    classes = rng.randint(2, 7)
    names = [f"c{k}" for k in range(classes)]
    n = rng.randint(5, 300)
    # skewed true labels; predictions right about half the time, else random (some classes may
    # never be predicted, or never true: scikit-learn's default label set decides the means)
    true = [min(int(rng.expovariate(0.7)), classes - 1) for _ in range(n)]
    predicted = [t if rng.random() < 0.5 else rng.randrange(classes) for t in true]
    ours = scores(predicted, true, names, prefix="test_")
    assert ours[M.TEST_ACCURACY] == pytest.approx(
        sklearn_metrics.accuracy_score(true, predicted), abs=1e-12)
    for average, key in (("macro", M.TEST_F1_MACRO), ("weighted", M.TEST_F1_WEIGHTED)):
        expected = sklearn_metrics.f1_score(true, predicted, average=average, zero_division=0)
        assert ours[key] == pytest.approx(expected, abs=1e-12), average
    per_class = sklearn_metrics.f1_score(true, predicted, average=None,
                                         labels=list(range(classes)), zero_division=0)
    assert list(ours[M.TEST_F1_BY_CLASS].values()) == pytest.approx(list(per_class), abs=1e-12)
    assert list(ours[M.TEST_F1_BY_CLASS]) == names
    assert ours[M.TEST_CONFUSION] == sklearn_metrics.confusion_matrix(
        true, predicted, labels=list(range(classes))).tolist()


def test_eval_split_keys_have_no_prefix_and_no_confusion():
    out = scores([0, 1, 1], [0, 1, 0], ["a", "b"])
    assert out[M.ACCURACY] == pytest.approx(2 / 3)
    assert M.TEST_CONFUSION not in out and set(out[M.F1_BY_CLASS]) == {"a", "b"}


def test_confusion_rows_are_true_labels():
    assert confusion([1, 1, 0], [0, 1, 1], 2) == [[0, 1], [1, 1]]


def test_classification_metrics_are_maximised():
    for name in (*M.CLASSIFY_EVAL, M.TEST_ACCURACY, M.TEST_F1_MACRO, M.TEST_F1_WEIGHTED):
        assert M.mode(name) == "max"
