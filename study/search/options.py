"""The command line of ``python -m study.tune`` as one frozen :class:`StudyOptions`.

Each flag is generated from a field of :class:`StudyOptions`, as ``study.fields`` generates
``train_one``'s from the config: the field's name is the flag, its type the flag's type, its
default the flag's default and its attribute docstring the flag's help, so a default is written
once. The parser lives here (not in ``study.tune``) because resuming a study re-parses the
command it was started with; planning, the Ray wiring and the summary read the options, never a
Namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from study import metrics as M
from study.cli import OneLineParser
from study.fields import attribute_docs, scalar
from study.search.samplers import SEARCHES


class UsageError(ValueError):
    """Bad input caught before Ray starts: one line, exit code 2, no result directory."""


# What the plan falls back to when a flag is not given (stated in that flag's --help).
DEFAULT_NUM_SAMPLES = 8  # configurations searched, unless --search grid runs its whole grid
DEFAULT_MAX_T = 1000  # ASHA's most steps, when the space fixes no train.steps
FULL_BASELINE_LR = 3e-5  # the full fine-tuning baseline's train.lr (all weights: a small step)
RESULTS_ENV = "LORA_STUDY_RESULTS"  # the default --storage-path, where set
SCHEDULERS = ("asha", "none")
AUTO = "auto"  # --gpus-per-trial auto: chosen from make gpu-check's measurement (gpu_share.py)


def flag(*, study: bool = False, choices=None, metavar: str | None = None,
         unset: str | None = None, note: str | None = None, env: str | None = None,
         parse=None) -> dict:
    """A StudyOptions field's command-line details, kept in ``dataclasses.field(metadata=...)``.

    ``study``: the flag defines the study (``--resume`` refuses another value); ``unset``: what a
    None default means, shown as the default; ``note``: a sentence the help adds (for values
    held in constants); ``env``: an environment variable that overrides the default;
    ``parse``: the function from the flag's text to its value, for a type that is not one
    callable (a number or a word); it raises ``argparse.ArgumentTypeError`` with the message.
    """
    return {"study": study, "choices": choices, "metavar": metavar, "unset": unset,
            "note": note, "env": env, "parse": parse}


def number_or_auto(text: str) -> float | str:
    """``--gpus-per-trial``'s text: ``auto``, or a number (its range is check_counts')."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or {AUTO}, got {text!r}"
                                         ) from None


def from_env(var: str, fallback: Path):
    """A field whose default is ``$var`` where set, else ``fallback`` (the dataclass and the
    parser read it alike, when each is made)."""

    def default() -> Path:
        return type(fallback)(os.environ.get(var) or fallback)

    return field(default_factory=default, metadata=flag(env=var))


@dataclass(frozen=True)
class StudyOptions:
    """Every flag of ``study.tune``: a field here is its flag (``num_samples`` is
    ``--num-samples``), with its type, its default and its help, the attribute docstring."""

    space: str = field(default="default", metadata=flag(study=True))
    """built-in search space (default, demo, smoke, smoke-grid, smoke-variants, thesis-news,
    seeds-qwen2) or a YAML file"""
    set: tuple[str, ...] = field(default=(), metadata=flag(study=True, metavar="KEY=VALUE"))
    """fix a config value, e.g. --set data.task=sft (repeatable)"""
    name: str | None = field(default=None, metadata=flag(unset="<space>-<date>-<time>"))
    """study name"""
    storage_path: Path = from_env(RESULTS_ENV, Path("results"))
    """where studies are written; a shared path on clusters"""
    num_samples: int | None = field(default=None, metadata=flag(
        study=True, unset=f"{DEFAULT_NUM_SAMPLES}; --search grid: every point of the grid"))
    """configurations searched"""
    repeats: int = field(default=1, metadata=flag(study=True))
    """runs of each configuration, seeded seed+0..seed+K-1 (the space's seed); the searcher is
    told their mean"""
    search: str = field(default="tpe", metadata=flag(study=True, choices=SEARCHES))
    """how configurations are chosen: tpe, grid (every point of an all-choice space once, in a
    seeded random order), random, gp (Gaussian process)"""
    scheduler: str = field(default="asha", metadata=flag(study=True, choices=SCHEDULERS))
    """asha (stop weak trials early) or none (every trial runs to its end)"""
    max_concurrent: int = 1
    """trials at once"""
    cpus_per_trial: float | None = field(default=None, metadata=flag(unset="all / concurrent"))
    """CPUs per trial"""
    gpus_per_trial: float | str | None = field(default=None, metadata=flag(
        unset="1 when CUDA is present, else 0", parse=number_or_auto, metavar="N|auto"))
    """GPUs per trial: a number >= 0 (a fraction shares a card) or auto, 1/K for the K trials
    per GPU that make gpu-check measured fastest on this GPU and model (0 without CUDA; 1 where
    nothing was measured, said on stderr)"""
    objective: str = field(default=M.EVAL_LOSS, metadata=flag(study=True))
    """metric, or a comma list for multi-objective (e.g. exact_match,peak_mem_mb); ASHA stops
    on the first"""
    max_t: int | None = field(default=None, metadata=flag(
        study=True, unset=f"the space's train.steps, else {DEFAULT_MAX_T}"))
    """ASHA: the most steps a trial runs"""
    grace: int | None = field(default=None, metadata=flag(study=True, unset="eval.every"))
    """ASHA: steps before any stop"""
    reduction_factor: float = field(default=2.0, metadata=flag(study=True))
    """ASHA reduction factor"""
    seed: int = field(default=0, metadata=flag(study=True))
    """seed of the searcher's sampler (trial seeds come from the space's seed)"""
    time_budget_s: float | None = None
    """stop launching trials after this long"""
    max_mem_mb: float | None = field(default=None, metadata=flag(study=True))
    """skip configs whose estimated peak, plus its measured error band, exceeds this; stop
    trials that exceed it"""
    no_baselines: bool = field(default=False, metadata=flag(
        study=True, note=f"the full run trains at train.lr {FULL_BASELINE_LR:g}"))
    """skip the base and full runs"""
    no_full_baseline: bool = field(default=False, metadata=flag(study=True))
    """skip the full fine-tuning run only (the costliest trial; the base still runs)"""
    resume: bool = False
    """continue the study named by --name"""
    address: str | None = field(default=None, metadata=flag(unset="a local cluster"))
    """join an existing Ray cluster at HOST:PORT"""
    dashboard: bool = False
    """start the Ray dashboard on 127.0.0.1 (token auth) and print its URL"""
    resource: tuple[str, ...] = field(default=(), metadata=flag(metavar="NAME=AMOUNT"))
    """a custom Ray resource each trial needs, e.g. to pin trials to nodes (repeatable)"""
    max_failures: int = 2
    """retries of a trial after a crash, from its last checkpoint"""


def flag_name(dest: str) -> str:
    """The command-line flag of a StudyOptions field: ``num_samples`` -> ``--num-samples``."""
    return "--" + dest.replace("_", "-")


def _meta(f: dataclasses.Field) -> dict:
    return {**flag(), **f.metadata}


def study_flags(cls: type = StudyOptions) -> dict[str, str]:
    """The flags that define a study (field -> flag): ``--resume`` takes them from study.json
    and refuses another value."""
    return {f.name: flag_name(f.name) for f in dataclasses.fields(cls) if _meta(f)["study"]}


# Flags that define a study: --resume takes them from study.json (a different value is refused).
STUDY_FLAGS = study_flags()


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _help(f: dataclasses.Field, doc: str) -> str:
    """The field's docstring, its default (or what leaving it unset means) and its note."""
    meta, default = _meta(f), _default(f)
    if meta["env"]:
        shown = f"${meta['env']} where set, else {_fallback(f)}"
    elif meta["unset"]:
        shown = meta["unset"]
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif default is None or default == ():
        shown = "none"
    else:
        shown = f"{default}"
    note = f"; {meta['note']}" if meta["note"] else ""
    return f"{doc} (default: {shown}{note})".replace("%", "%%")


def _fallback(f: dataclasses.Field) -> str:
    """An environment-read default's value when the variable is not set."""
    saved = os.environ.pop(_meta(f)["env"], None)
    try:
        return str(f.default_factory())
    finally:
        if saved is not None:
            os.environ[_meta(f)["env"]] = saved


def _add_flag(parser: argparse.ArgumentParser, f: dataclasses.Field, hint, doc: str) -> None:
    """The argparse argument of one field, from its type, default and metadata."""
    meta, default = _meta(f), _default(f)
    kind, _ = scalar(hint)
    kwargs: dict = {"dest": f.name, "help": _help(f, doc)}
    if kind is bool:
        kwargs.update(action="store_true", default=default)
    elif typing.get_origin(kind) is tuple:  # repeatable: each use adds one value
        kwargs.update(action="append", default=list(default), type=typing.get_args(kind)[0])
    else:
        kwargs.update(type=meta["parse"] or kind, default=default)
    if meta["choices"]:
        kwargs["choices"] = meta["choices"]
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    parser.add_argument(flag_name(f.name), **kwargs)


def build_parser(
    description: str | None = None, cls: type = StudyOptions
) -> argparse.ArgumentParser:
    """The parser of ``python -m study.tune`` (``description``: its help text), one flag per
    field of ``cls`` (StudyOptions or a subclass), generated."""
    parser = OneLineParser.for_module("python -m study.tune", description)
    hints, docs = typing.get_type_hints(cls), attribute_docs(cls)
    for f in dataclasses.fields(cls):
        _add_flag(parser, f, hints[f.name], docs.get(f.name, ""))
    return parser


def parse_options(
    argv: list[str] | None = None, description: str | None = None, cls: type = StudyOptions
) -> StudyOptions:
    """The command line as ``cls`` (StudyOptions; a bad flag: one line, exit code 2)."""
    values = vars(build_parser(description, cls).parse_args(argv))
    repeatable = {f.name for f in dataclasses.fields(cls) if isinstance(_default(f), tuple)}
    return cls(**{k: tuple(v) if k in repeatable else v for k, v in values.items()})


def parse_resources(items: tuple[str, ...]) -> dict[str, float]:
    """--resource NAME=AMOUNT pairs -> {name: amount} (UsageError on a bad one)."""
    out = {}
    for item in items:
        name, sep, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name or value <= 0 or name in ("cpu", "gpu", "CPU", "GPU"):
            raise UsageError(
                f"--resource expects NAME=AMOUNT with a custom name and an amount > 0, got {item!r}"
            )
        out[name] = value
    return out


def check_counts(options: StudyOptions) -> None:
    """Every count and limit in range (UsageError naming the flag)."""
    checks = [
        ("--num-samples", options.num_samples, 1),
        ("--max-concurrent", options.max_concurrent, 1),
        ("--max-t", options.max_t, 1),
        ("--grace", options.grace, 1),
        ("--cpus-per-trial", options.cpus_per_trial, 0),
        ("--gpus-per-trial", None if options.gpus_per_trial == AUTO else options.gpus_per_trial,
         0),
        ("--max-failures", options.max_failures, 0),
        ("--time-budget-s", options.time_budget_s, 1e-9),
        ("--max-mem-mb", options.max_mem_mb, 1),
        ("--repeats", options.repeats, 1),
    ]
    for flag, value, low in checks:
        number = isinstance(value, (int, float))  # a word given in code, not on the command line
        if value is not None and not (number and math.isfinite(value) and value >= low):
            also = f" or {AUTO}" if flag == "--gpus-per-trial" else ""  # NaN and inf refused too
            shown = f"{value:g}" if number else repr(value)
            raise UsageError(f"{flag} must be a number >= {low:g}{also}, got {shown}")
    if not (math.isfinite(options.reduction_factor) and options.reduction_factor > 1):
        raise UsageError(f"--reduction-factor must be > 1, got {options.reduction_factor:g}")


def with_recorded(options: StudyOptions, argv: list[str], recorded: StudyOptions, study: str):
    """``options`` with the study-defining flags of the recorded start (for ``--resume``).

    Repeating a recorded flag is fine; giving another value is refused (it would be another
    study): UsageError naming the flag and the recorded value.
    """
    defaults = parse_options([])
    changes = {}
    for dest, flag in STUDY_FLAGS.items():
        given, was = getattr(options, dest), getattr(recorded, dest)
        named = any(a == flag or a.startswith(f"{flag}=") for a in argv)
        if (named or given != getattr(defaults, dest)) and given != was:
            shown = list(given) if isinstance(given, tuple) else given
            shown_was = list(was) if isinstance(was, tuple) else was
            raise UsageError(
                f"--resume continues {study} as it was started, with {flag} {shown_was!r}; "
                f"got {shown!r} (use another --name for a new study)"
            )
        changes[dest] = was
    return dataclasses.replace(options, **changes)
