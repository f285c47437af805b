"""The space a study searches: the space file with ``--set`` and ``--max-t`` applied and the
study's own defaults added, or on ``--resume`` the recorded one; validated.

    space = study_space(options, objectives, recorded)    # UsageError: one line for the user

What this returns is what ``study.json`` records (``study.search.plan.study_record``), so a
resumed study searches the space it started with, whatever the space file says now.
"""

from __future__ import annotations

import json
from pathlib import Path

from search_spaces import SpaceError, flat_leaves, is_distribution, load_space, load_yaml
from search_spaces import validate as validate_space
from study import metrics as M
from study.search.options import StudyOptions, UsageError
from study.trial.tasks import labelled
from study.trial.tasks import text as text_sources


def study_space(options: StudyOptions, objectives: list[str], recorded: dict | None) -> dict:
    """The study's space, validated: ``recorded``'s (a study.json on --resume), else the
    space file's with the flags and defaults applied."""
    try:
        if recorded is not None:  # the space as the study resolved it when it started
            space = recorded["space"]
        else:
            space = apply_sets(load_space(options.space), parse_sets(options.set))
            space = _apply_max_t(space, options.max_t)
            space = _early_prompts(space, objectives)
            space = _absolute_sources(space)
        validate_space(space)
    except SpaceError as err:
        raise UsageError(str(err)) from None
    return space


def parse_sets(items: tuple[str, ...]) -> dict:
    """--set KEY=VALUE pairs -> dotted dict (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = load_yaml(value)
        except yaml.YAMLError as err:
            first = str(err).strip().splitlines()[0]
            raise UsageError(f"--set {item}: the value does not parse ({first})") from None
    return out


def apply_sets(space: dict, sets: dict) -> dict:
    """A copy of ``space`` with dotted ``sets`` fixed in it."""
    out = json.loads(json.dumps(space))
    for key, value in sets.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {key}: {part} is not a section")
        node[leaf] = value
    return out


def _apply_max_t(space: dict, max_t: int | None) -> dict:
    """--max-t is the most steps a trial runs: it sets train.steps (and drops train.epochs)."""
    if max_t is None:
        return space
    leaves = flat_leaves(space)
    if is_distribution(leaves.get("train.steps")) or is_distribution(leaves.get("train.epochs")):
        raise UsageError(
            "--max-t sets train.steps, but this space searches the training length; "
            "give the steps in the space instead"
        )
    sets = {"train.steps": max_t}
    if leaves.get("train.epochs") is not None:
        sets["train.epochs"] = None
    return apply_sets(space, sets)


def _early_prompts(space: dict, objectives: list[str]) -> dict:
    """No generation before a trial's last evaluation unless an objective needs exact match
    there (ASHA's rungs, and the value a stopped trial gives Optuna): the loss is what ASHA
    compares, and generation was most of the evaluation time. A space or --set that gives
    eval.early_prompts keeps it."""
    if M.EXACT_MATCH in objectives or "eval.early_prompts" in flat_leaves(space):
        return space
    return apply_sets(space, {"eval.early_prompts": 0})


def _absolute_sources(space: dict) -> dict:
    """A local data.source as an absolute path: trials run in their own directories (Ray's
    workers change into them), where a path relative to this command's directory is not."""
    leaf = flat_leaves(space).get("data.source")
    values = leaf["choice"] if isinstance(leaf, dict) and "choice" in leaf else [leaf]

    def absolute(value):
        named = ("builtin", *text_sources.HUB_DATASETS, *labelled.HUB)
        if not isinstance(value, str) or value in named or not Path(value).expanduser().exists():
            return value  # a built-in or hub name, or a missing file (the plan says so)
        return str(Path(value).expanduser().resolve())

    fixed = [absolute(v) for v in values]
    if fixed == values:
        return space
    return apply_sets(space, {"data.source": {"choice": fixed} if values is not leaf else fixed[0]})
