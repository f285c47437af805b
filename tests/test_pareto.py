"""analysis.pareto: properties of the mask (hypothesis) and agreement with brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.pareto import NO_RANK, hypervolume_2d, pareto_mask, pareto_ranks

# Small integer values make ties and duplicates common; NaN rows appear now and then.
VALUE = st.one_of(st.integers(0, 4).map(float), st.floats(-10, 10), st.just(float("nan")))


@st.composite
def problems(draw, max_rows: int = 24, min_k: int = 1, max_k: int = 4, nan: bool = True):
    """(values (n, k), maximize (k,)) with any mix of directions."""
    k = draw(st.integers(min_k, max_k))
    n = draw(st.integers(0, max_rows))
    cell = VALUE if nan else st.one_of(st.integers(0, 4).map(float), st.floats(-10, 10))
    rows = draw(st.lists(st.lists(cell, min_size=k, max_size=k), min_size=n, max_size=n))
    values = np.array(rows, dtype=float).reshape(n, k)
    maximize = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    return values, maximize


def dominates(a: np.ndarray, b: np.ndarray, maximize) -> bool:
    """Plain-Python reference: a is no worse everywhere and better somewhere."""
    no_worse = all((x >= y) if up else (x <= y) for x, y, up in zip(a, b, maximize))
    better = any((x > y) if up else (x < y) for x, y, up in zip(a, b, maximize))
    return no_worse and better


def brute_mask(values: np.ndarray, maximize) -> np.ndarray:
    valid = [not np.isnan(v).any() for v in values]
    return np.array(
        [
            valid[i]
            and not any(
                valid[j] and dominates(values[j], values[i], maximize) for j in range(len(values))
            )
            for i in range(len(values))
        ],
        dtype=bool,
    )


@settings(max_examples=300, deadline=None)
@given(problems())
def test_mask_equals_brute_force(problem):
    values, maximize = problem
    assert pareto_mask(values, maximize).tolist() == brute_mask(values, maximize).tolist()


@settings(max_examples=200, deadline=None)
@given(problems())
def test_no_front_point_is_dominated_and_every_other_point_is(problem):
    values, maximize = problem
    mask = pareto_mask(values, maximize)
    valid = ~np.isnan(values).any(axis=1)
    front = values[mask]
    for i in np.flatnonzero(valid):
        if mask[i]:
            assert not any(dominates(v, values[i], maximize) for v in values[valid])
        else:  # dominated by a point *of the front*, not merely by some point
            assert any(dominates(f, values[i], maximize) for f in front)
    assert not mask[~valid].any()  # NaN rows are never on the front


@settings(max_examples=200, deadline=None)
@given(problems(), st.randoms(use_true_random=False))
def test_invariant_under_row_order(problem, rnd):
    values, maximize = problem
    perm = list(range(len(values)))
    rnd.shuffle(perm)
    assert (
        pareto_mask(values[perm], maximize).tolist() == pareto_mask(values, maximize)[perm].tolist()
    )
    assert (
        pareto_ranks(values[perm], maximize).tolist()
        == pareto_ranks(values, maximize)[perm].tolist()
    )


@settings(max_examples=200, deadline=None)
@given(problems(nan=False))
def test_maximising_a_column_is_minimising_its_negation(problem):
    values, maximize = problem
    flipped = values * np.where(maximize, -1.0, 1.0)
    expected = pareto_mask(flipped, [False] * len(maximize))
    assert pareto_mask(values, maximize).tolist() == expected.tolist()
    assert (
        pareto_mask(values, [not m for m in maximize]).tolist()
        == pareto_mask(-values, maximize).tolist()
    )


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_duplicates_share_their_flag_and_change_nothing_else(problem, data):
    values, maximize = problem
    if not len(values):
        return
    i = data.draw(st.integers(0, len(values) - 1))
    with_dup = np.vstack([values, values[i : i + 1]])
    before = pareto_mask(values, maximize)
    after = pareto_mask(with_dup, maximize)
    assert after[:-1].tolist() == before.tolist()
    assert after[-1] == before[i]


@settings(max_examples=200, deadline=None)
@given(problems())
def test_ranks_peel_successive_fronts(problem):
    values, maximize = problem
    ranks = pareto_ranks(values, maximize)
    valid = ~np.isnan(values).any(axis=1)
    assert (ranks[~valid] == NO_RANK).all() and (ranks[valid] >= 0).all()
    assert ((ranks == 0) == pareto_mask(values, maximize)).all()
    for i in np.flatnonzero(valid):
        r = ranks[i]
        if r > 0:  # dominated by the front just above it ...
            assert any(
                dominates(values[j], values[i], maximize) for j in np.flatnonzero(ranks == r - 1)
            )
        # ... and by nothing in its own front or below
        same_or_below = np.flatnonzero(valid & (ranks >= r))
        assert not any(dominates(values[j], values[i], maximize) for j in same_or_below)


def brute_hypervolume(points: np.ndarray, reference) -> float:
    """Min-min integer points: count the unit cells some point dominates inside the box."""
    rx, ry = reference
    count = 0
    for cx, cy in itertools.product(range(-6, rx), range(-6, ry)):
        if any(px <= cx and py <= cy for px, py in points):
            count += 1
    return float(count)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-6, 6), st.integers(-6, 6)), max_size=12))
def test_hypervolume_counts_dominated_cells(points):
    values = np.array(points, dtype=float).reshape(-1, 2)
    assert hypervolume_2d(values, [False, False], (5, 5)) == brute_hypervolume(points, (5, 5))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-6, 6), st.integers(-6, 6)), max_size=12))
def test_hypervolume_with_a_maximised_objective_mirrors(points):
    values = np.array(points, dtype=float).reshape(-1, 2)
    mirrored = values * [1, -1]
    assert hypervolume_2d(mirrored, [False, True], (5, -5)) == hypervolume_2d(
        values, [False, False], (5, 5)
    )


def test_hypervolume_examples_and_nan():
    assert hypervolume_2d(np.array([[1.0, 1.0]]), [False, False], (3, 3)) == 4.0
    # two boxes 2x1 and 1x2 overlapping in a 1x1 cell: 2 + 2 - 1
    two = np.array([[1.0, 2.0], [2.0, 1.0], [2.5, 2.5], [np.nan, 0.0]])
    assert hypervolume_2d(two, [False, False], (3, 3)) == 3.0
    assert hypervolume_2d(np.array([[4.0, 1.0]]), [False, False], (3, 3)) == 0.0  # outside
    assert hypervolume_2d(np.zeros((0, 2)), [False, False], (3, 3)) == 0.0
    with pytest.raises(ValueError, match="2 objectives"):
        hypervolume_2d(np.zeros((1, 3)), [False] * 3, (1, 1, 1))


def test_documented_examples():
    # ties in one objective: both stay when each wins the other; exact duplicates both stay
    values = np.array([[1, 2], [1, 3], [2, 1], [2, 1], [3, 3], [np.nan, 0]], dtype=float)
    assert pareto_mask(values, [False, False]).tolist() == [True, False, True, True, False, False]
    assert pareto_ranks(values, [False, False]).tolist() == [0, 1, 0, 0, 2, -1]
    # exact_match (max) vs memory (min)
    quality_mem = np.array([[0.5, 100], [0.7, 200], [0.6, 300], [0.7, 150]], dtype=float)
    assert pareto_mask(quality_mem, [True, False]).tolist() == [True, False, False, True]
    assert pareto_mask(np.zeros((0, 2)), [False, False]).tolist() == []


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="2-D"):
        pareto_mask(np.zeros(3), [False])
    with pytest.raises(ValueError, match="maximize has 1 entries for 2 objectives"):
        pareto_mask(np.zeros((3, 2)), [False])
