"""The searcher's Optuna sampler for each ``--search`` mode, and the check that a space fits it.

    problem = check_search("grid", space)           # None, or one line for the user
    sampler = make_sampler("gp", space, seed=0, num_samples=8)

Every mode goes through the one searcher (``study.search.searcher``): the same hand-off to
Optuna, the same memory budget, the same resume. Only how the next configuration is proposed
differs:

- ``tpe``: Optuna's multivariate TPE (the default; :func:`tpe_sampler`);
- ``grid``: Optuna's ``GridSampler`` over every point of an all-choice space, in an order
  shuffled by ``--seed``; each point is asked once (a finished or running point is never drawn
  again, and the journal keeps which ones were, so a resumed study goes on with the rest);
- ``random``: Optuna's ``RandomSampler``;
- ``gp``: Optuna's ``GPSampler`` (a Gaussian process with a log-EI acquisition; needs scipy),
  random for its first trials as TPE.

Ray-free: ``bench/search_efficiency.py`` and the tests use it without starting Ray.
"""

from __future__ import annotations

from search_spaces import continuous, grid_axes

SEARCHES = ("tpe", "grid", "random", "gp")
GRID_LIMIT = 100_000  # points; a larger grid is refused (it would never finish)


def startup_trials(num_samples: int | None) -> int:
    """Random trials before a model-based sampler (TPE, GP) models anything.

    Optuna's default is 10. Studies here are often small (the demo runs 8 trials), so a
    quarter of the planned trials, between 3 and 10, start at random and the rest are guided.
    """
    return 10 if num_samples is None else max(3, min(10, num_samples // 4))


def retries(mode: str) -> int:
    """Proposals in a row the searcher may answer without a launch (a configuration already
    run, one over the memory budget) before it picks an untried point of a finite space or ends.

    The GP refits its model on every proposal, seconds each on a CPU and longer as repeats pile
    up in its data; on a small finite space it keeps proposing what it has, so it gets few
    tries. TPE and random cost milliseconds per proposal (bench/search_modes.py).
    """
    return 5 if mode == "gp" else 200


def tpe_sampler(seed: int, num_samples: int | None = None):
    """Optuna's TPE, seeded, multivariate, with its random start sized to the study.

    Multivariate TPE models the parameters jointly (rank, alpha, lr and targets interact: the
    best lr depends on the scaling alpha / r); bench/search_efficiency.py measures both choices.
    """
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed, n_startup_trials=startup_trials(num_samples), multivariate=True)


def check_search(mode: str, space: dict) -> str | None:
    """Why ``space`` cannot be searched with ``mode`` (one line), or None when it can."""
    if mode not in SEARCHES:
        return f"--search must be one of {', '.join(SEARCHES)}, got {mode!r}"
    if mode != "grid":
        return None
    if keys := continuous(space):
        return (
            f"--search grid needs a space of choices, but {keys[0]} is continuous; make it a "
            f"choice in the space or fix it with --set {keys[0]}=VALUE"
        )
    if grid_axes(space, GRID_LIMIT) is None:
        return f"--search grid: the space has more than {GRID_LIMIT} points"
    return None


def grid_size(space: dict) -> int | None:
    """How many points a grid search of ``space`` runs (None: not a finite space)."""
    axes = grid_axes(space, GRID_LIMIT)
    if axes is None:
        return None
    size = 1
    for values in axes.values():
        size *= len(values)
    return size


def make_sampler(mode: str, space: dict, seed: int, num_samples: int | None = None):
    """The Optuna sampler of ``--search mode`` for ``space`` (checked with check_search)."""
    import optuna

    problem = check_search(mode, space)
    if problem:
        raise ValueError(problem)
    if mode == "tpe":
        return tpe_sampler(seed, num_samples)
    if mode == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if mode == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(num_samples))
    return _study_grid(grid_axes(space, GRID_LIMIT), seed)


def _study_grid(axes: dict, seed: int):
    """Optuna's GridSampler over ``axes``, asked and told outside ``Study.optimize``.

    GridSampler calls ``Study.stop`` once every point has been drawn, and ``Study.stop`` raises
    outside ``optimize``; the searcher ends the search itself when every point of the finite
    space is resolved (``search_ended``), so the subclass leaves that hook empty.
    """
    from optuna.samplers import GridSampler

    class StudyGrid(GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            """Nothing: the searcher, not ``Study.stop``, ends a grid search."""

    return StudyGrid(axes, seed=seed)
