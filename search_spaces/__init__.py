"""Named search spaces as plain data, and their converters to Optuna and Ray Tune.

    space = load_space("default")          # or a path to the user's own YAML
    distributions = to_optuna(space)       # {"lora.rank": CategoricalDistribution(...), ...}
    param_space = to_tune(space)           # {"lora.rank": tune.choice(...), "train.lr": 3e-4, ...}

A space is shaped like ``TrialConfig`` (``lora.rank``, ``train.lr``, ...). A leaf is either a fixed
value or a one-key mapping naming a distribution:

    {choice: [4, 8, 16]}   {loguniform: [1e-5, 1e-2]}   {uniform: [0.0, 0.1]}   {randint: [a, b]}

Categorical values are scalars or strings (targets are ``qv``, ``qkvo``, ``all-linear``, ...),
never lists, so Optuna can store them. ``randint`` includes both ends.

An optional top-level ``points_to_evaluate`` lists configurations (dotted keys, searched
parameters only; the rest take their first choice / low end) that the searcher tries first.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path
from typing import Any

SPACES_DIR = Path(__file__).resolve().parent
DISTRIBUTIONS = ("choice", "loguniform", "uniform", "randint")
POINTS = "points_to_evaluate"


class SpaceError(ValueError):
    """A search space that does not parse or does not fit TrialConfig."""


def load_yaml(text: str) -> Any:
    """YAML as people type numbers: ``3e-4`` and ``1e5`` are floats (YAML 1.2), not strings.

    PyYAML follows YAML 1.1, whose floats need a dot (``3.0e-4``); every space, ``--set`` value
    and config file goes through this loader instead.
    """
    import yaml

    return yaml.load(text, Loader=_number_loader())


@functools.cache
def _number_loader():
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader with YAML 1.2's float forms (the class copies the resolvers it adds to)."""

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def list_spaces() -> list[str]:
    """Names of the built-in spaces."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str) -> dict[str, Any]:
    """A built-in space by name, or a YAML file; checked with :func:`validate`."""
    import yaml

    path = Path(name_or_path).expanduser()
    if not path.is_file():
        builtin = SPACES_DIR / f"{name_or_path}.yaml"
        if not builtin.is_file():
            raise SpaceError(
                f"search space {name_or_path!r} is neither a built-in space "
                f"({', '.join(list_spaces())}) nor an existing file"
            )
        path = builtin
    try:
        space = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise SpaceError(f"search space {path} does not parse: {first}") from None
    if not isinstance(space, dict):
        raise SpaceError(f"search space {path} must be a mapping shaped like TrialConfig")
    validate(space)
    return space


def is_distribution(value: Any) -> bool:
    """True for a leaf like ``{choice: [...]}``."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _looks_like_leaf(value: Any) -> bool:
    """A one-key mapping to a list: a distribution, known or not (sections hold mappings)."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())),
                                                                       list)


def flat_leaves(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf (a fixed value or a distribution mapping); points excluded."""
    out: dict[str, Any] = {}
    for key, value in space.items():
        if not prefix and key == POINTS:
            continue
        if isinstance(value, dict) and not _looks_like_leaf(value):
            out.update(flat_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_leaf(key: str, leaf: dict) -> None:
    ((kind, args),) = leaf.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{key}: choice needs a non-empty list, got {args!r}")
        bad = [a for a in args if isinstance(a, (list, dict))]
        if bad:
            raise SpaceError(f"{key}: choice values must be scalars or strings, got {bad[0]!r}")
        return
    if not (
        isinstance(args, list)
        and len(args) == 2
        and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    ):
        raise SpaceError(f"{key}: {kind} needs [low, high], got {args!r}")
    low, high = args
    if not all(math.isfinite(a) for a in args):
        raise SpaceError(f"{key}: {kind} needs finite [low, high], got {args!r}")
    if not low < high or (kind == "loguniform" and low <= 0):
        raise SpaceError(
            f"{key}: {kind} needs 0 < low < high for loguniform, low < high otherwise; got {args!r}"
        )
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise SpaceError(f"{key}: randint needs integers, got {args!r}")


def _check_in_space(key: str, value: Any, leaf: dict) -> None:
    """A point's value must be one the distribution can hold: one of a choice's values (Optuna
    refuses any other), a number for a range. A number outside a range is tried as given
    (Optuna warns): a point may be a known reference outside the searched range."""
    ((kind, args),) = leaf.items()
    if kind == "choice":
        if value not in args:
            raise SpaceError(f"{POINTS}: {key}={value!r} is not one of its choices {args}")
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (kind == "randint" and value % 1):
        what = "an integer" if kind == "randint" else "a number"
        raise SpaceError(f"{POINTS}: {key}={value!r} must be {what} (its {kind} range {args})")


def sample_point(space: dict[str, Any]) -> dict[str, Any]:
    """One concrete config (dotted keys): the first choice / the low end of each range."""
    point = {}
    for key, leaf in flat_leaves(space).items():
        point[key] = next(iter(leaf.values()))[0] if is_distribution(leaf) else leaf
    return point


def choice_points(space: dict[str, Any], keys: tuple[str, ...], high: tuple[str, ...] = (),
                  ) -> list[dict[str, Any]]:
    """Every combination of the choices of ``keys`` (a range: its low end, or its high end for
    the keys in ``high``), each completed by :func:`sample_point`: the configurations a
    resource bound has to consider."""
    leaves, point = flat_leaves(space), sample_point(space)
    options = {}
    for key in keys:
        leaf = leaves.get(key)
        if is_distribution(leaf):
            ((kind, values),) = leaf.items()
            options[key] = values if kind == "choice" else [values[-1 if key in high else 0]]
    return [{**point, **dict(zip(options, combo))}
            for combo in itertools.product(*options.values())]


def validate(space: dict[str, Any]) -> None:
    """Check every distribution, and that every key and value fits TrialConfig.

    Raises:
        SpaceError: naming the key and the problem.
    """
    from study.config import TrialConfig

    leaves = flat_leaves(space)
    for key, leaf in leaves.items():
        if isinstance(leaf, dict) and not is_distribution(leaf):
            raise SpaceError(
                f"{key}: unknown distribution {leaf!r}; use one of {', '.join(DISTRIBUTIONS)}"
            )
        if is_distribution(leaf):
            _check_leaf(key, leaf)
    choice_points = [sample_point(space)]
    for key, leaf in leaves.items():  # every choice, and both ends of a range, must be valid
        if is_distribution(leaf):
            ((kind, values),) = leaf.items()
            for value in values[1:] if kind == "choice" else values[-1:]:
                choice_points.append({**choice_points[0], key: value})
    for point in choice_points:
        try:
            TrialConfig.from_dict(point)
        except ValueError as err:
            raise SpaceError(f"search space: {err}") from None
    for point in space.get(POINTS) or []:
        if not isinstance(point, dict):
            raise SpaceError(f"{POINTS} must be a list of mappings, got {point!r}")
        searched = {k for k, leaf in leaves.items() if is_distribution(leaf)}
        extra = sorted(set(point) - searched)
        if extra:
            raise SpaceError(
                f"{POINTS}: {extra[0]} is not a searched parameter; searched: "
                f"{', '.join(sorted(searched))}"
            )
        for key, value in point.items():
            _check_in_space(key, value, leaves[key])
        try:
            TrialConfig.from_dict({**choice_points[0], **point})
        except ValueError as err:
            raise SpaceError(f"{POINTS}: {err}") from None


def tune_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """``points_to_evaluate``: every searched key (dotted), unset ones from the first choice."""
    defaults = sample_point(space)
    searched = _searched(space)
    return [{k: point.get(k, defaults[k]) for k in searched} for point in space.get(POINTS) or []]


def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    """The space as Ray Tune's ``param_space``: dotted keys, distributions as Tune domains.

    The keys are ``TrialConfig``'s dotted names (``lora.rank``), the same in Optuna's record and
    in the config a trial receives, which ``TrialConfig.from_dict`` takes as it is.
    """
    from ray import tune

    def convert(value: Any) -> Any:
        if not is_distribution(value):
            return value
        ((kind, args),) = value.items()
        if kind == "choice":
            return tune.choice(list(args))
        if kind == "loguniform":
            return tune.loguniform(*args)
        if kind == "uniform":
            return tune.uniform(*args)
        return tune.randint(args[0], args[1] + 1)  # Tune's upper bound is exclusive

    return {key: convert(leaf) for key, leaf in flat_leaves(space).items()}


def _searched(space: dict[str, Any]) -> dict[str, tuple[str, list]]:
    """Dotted key -> (distribution kind, its arguments) of every searched parameter, in order."""
    out = {}
    for key, leaf in flat_leaves(space).items():
        if is_distribution(leaf):
            ((kind, args),) = leaf.items()
            out[key] = (kind, args)
    return out


def fixed_values(space: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys the space fixes, with their values."""
    return {k: leaf for k, leaf in flat_leaves(space).items() if not is_distribution(leaf)}


def to_optuna(space: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters as Optuna distributions (dotted names, the space's order).

    The same distributions Ray's ``OptunaSearch.convert_search_space(to_tune(space))`` builds
    (tests/test_spaces.py checks it), so a searcher on these asks what Ray's would.
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out = {}
    for key, (kind, args) in _searched(space).items():
        if kind == "choice":
            out[key] = CategoricalDistribution(list(args))
        elif kind == "loguniform":
            out[key] = FloatDistribution(args[0], args[1], log=True)
        elif kind == "uniform":
            out[key] = FloatDistribution(args[0], args[1])
        else:
            out[key] = IntDistribution(args[0], args[1])  # both ends included, as in the space
    return out


def continuous(space: dict[str, Any]) -> list[str]:
    """The searched keys with a continuous domain (``uniform`` / ``loguniform``)."""
    return [k for k, (kind, _) in _searched(space).items() if kind in ("uniform", "loguniform")]


def grid_axes(space: dict[str, Any], limit: int = 100_000) -> dict[str, list] | None:
    """Each searched key's values (a choice's, every integer of a randint), or None when a
    parameter is continuous or the space has more than ``limit`` configurations."""
    axes = {}
    for key, (kind, args) in _searched(space).items():
        if kind == "choice":
            axes[key] = list(args)
        elif kind == "randint":
            axes[key] = list(range(args[0], args[1] + 1))
        else:
            return None
    if math.prod(len(v) for v in axes.values()) > limit:
        return None
    return axes


def grid(space: dict[str, Any], limit: int = 100_000) -> list[dict[str, Any]] | None:
    """Every configuration of a finite space (searched keys only), or None.

    None when a parameter is continuous (``uniform`` / ``loguniform``) or the space has more
    than ``limit`` configurations: such a space is never exhausted by a search.
    """
    axes = grid_axes(space, limit)
    if axes is None:
        return None
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
