"""The command line of ``python -m study.tune`` as one frozen :class:`StudyOptions`.

The parser lives here (not in ``study.tune``) because resuming a study re-parses the command it
was started with; planning, the Ray wiring and the summary read the options, never a Namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from study import metrics as M
from study.cli import OneLineParser
from study.search.samplers import SEARCHES


class UsageError(ValueError):
    """Bad input caught before Ray starts: one line, exit code 2, no result directory."""


@dataclass(frozen=True)
class StudyOptions:
    """Every flag of ``study.tune``, parsed (see ``--help`` for each)."""

    space: str = "default"
    set: tuple[str, ...] = ()
    name: str | None = None
    storage_path: Path = Path("results")
    num_samples: int | None = None  # the plan resolves it: a grid search's size, else 8
    max_concurrent: int = 1
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    objective: str = M.EVAL_LOSS
    max_t: int | None = None
    grace: int | None = None
    reduction_factor: float = 2.0
    seed: int = 0
    time_budget_s: float | None = None
    max_mem_mb: float | None = None
    no_baselines: bool = False
    resume: bool = False
    address: str | None = None
    dashboard: bool = False
    resource: tuple[str, ...] = ()
    max_failures: int = 2
    repeats: int = 1
    search: str = "tpe"
    scheduler: str = "asha"


# Flags that define a study: --resume takes them from study.json (a different value is refused).
STUDY_FLAGS = {
    "space": "--space",
    "set": "--set",
    "objective": "--objective",
    "num_samples": "--num-samples",
    "max_t": "--max-t",
    "grace": "--grace",
    "reduction_factor": "--reduction-factor",
    "seed": "--seed",
    "max_mem_mb": "--max-mem-mb",
    "no_baselines": "--no-baselines",
    "repeats": "--repeats",
    "search": "--search",
    "scheduler": "--scheduler",
}

SCHEDULERS = ("asha", "none")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m study.tune`` (``description``: its help text)."""
    p = OneLineParser.for_module("python -m study.tune", description)
    p.add_argument(
        "--space",
        default="default",
        help="built-in search space (default, smoke, smoke-grid, smoke-variants, thesis-news, "
        "seeds-qwen2) or a YAML file",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a config value, e.g. --set data.task=sft (repeatable)",
    )
    p.add_argument("--name", help="study name (default: <space>-<date>-<time>)")
    p.add_argument(
        "--storage-path",
        type=Path,
        default=Path(os.environ.get("LORA_STUDY_RESULTS", "results")),
        help="where studies are written (default $LORA_STUDY_RESULTS or ./results); a shared path"
        " on clusters",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        help="configurations searched (default 8; --search grid: every point of the grid)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each configuration, seeded seed+0..seed+K-1 (the space's seed); the"
        " searcher is told their mean (default 1)",
    )
    p.add_argument(
        "--search",
        choices=SEARCHES,
        default="tpe",
        help="how configurations are chosen: tpe (default), grid (every point of an all-choice"
        " space once, in a seeded random order), random, gp (Gaussian process)",
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="asha",
        help="asha (default: stop weak trials early) or none (every trial runs to its end)",
    )
    p.add_argument("--max-concurrent", type=int, default=1, help="trials at once (default 1)")
    p.add_argument(
        "--cpus-per-trial", type=float, help="CPUs per trial (default: all / concurrent)"
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial, fractions allowed (default 1 when CUDA is present, else 0)",
    )
    p.add_argument(
        "--objective",
        default=M.EVAL_LOSS,
        help="metric, or a comma list for multi-objective (e.g. exact_match,peak_mem_mb);"
        " ASHA stops on the first",
    )
    p.add_argument(
        "--max-t",
        type=int,
        help="ASHA: the most steps a trial runs (default: the space's train.steps)",
    )
    p.add_argument("--grace", type=int, help="ASHA: steps before any stop (default: eval.every)")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the searcher's sampler (trial seeds come from the space's seed)",
    )
    p.add_argument("--time-budget-s", type=float, help="stop launching trials after this long")
    p.add_argument(
        "--max-mem-mb",
        type=float,
        help="skip configs whose estimated peak exceeds this; stop trials that exceed it",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the base and full runs")
    p.add_argument("--resume", action="store_true", help="continue the study named by --name")
    p.add_argument("--address", help="join an existing Ray cluster at HOST:PORT")
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="start the Ray dashboard on 127.0.0.1 (token auth) and print its URL",
    )
    p.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each trial needs, e.g. to pin trials to nodes (repeatable)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a trial after a crash, from its last checkpoint (default 2)",
    )
    return p


def parse_options(argv: list[str] | None = None, description: str | None = None) -> StudyOptions:
    """The command line as StudyOptions (a bad flag: one line, exit code 2)."""
    values = vars(build_parser(description).parse_args(argv))
    values["set"], values["resource"] = tuple(values["set"]), tuple(values["resource"])
    return StudyOptions(**values)


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
        ("--gpus-per-trial", options.gpus_per_trial, 0),
        ("--max-failures", options.max_failures, 0),
        ("--time-budget-s", options.time_budget_s, 1e-9),
        ("--max-mem-mb", options.max_mem_mb, 1),
        ("--repeats", options.repeats, 1),
    ]
    for flag, value, low in checks:
        if value is not None and not (math.isfinite(value) and value >= low):  # NaN, inf too
            raise UsageError(f"{flag} must be a number >= {low:g}, got {value:g}")
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
