"""Planning a study: every check before Ray starts or anything is written, into a frozen Plan.

    plan = plan_study(parse_options(argv), argv)    # UsageError: one line for the user

The plan holds the options (with ``--resume``: the recorded ones), the resolved space
(``study.search.space``), the objectives, the model's facts for the memory estimate and the
baselines to run.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from search_spaces import flat_leaves, sample_point
from study import journal, record
from study.config import TrialConfig
from study.cost.estimate import (
    Facts,
    check_space_inits,
    check_space_ranks,
    gate_cfg,
    model_facts,
    smallest_estimate,
    worker_mb,
)
from study.cost.timing import StudyTime, study_time
from study.outdir import check_output_dir
from study.search import forks, gpu_share
from study.search.objectives import check_objectives_fit_task, parse_objectives
from study.search.options import (
    DEFAULT_MAX_T,
    DEFAULT_NUM_SAMPLES,
    FULL_BASELINE_LR,
    StudyOptions,
    UsageError,
    check_counts,
    parse_resources,
)
from study.search.replicates import baseline_repeats
from study.search.resume import recorded_options
from study.search.samplers import check_search, grid_size
from study.search.space import study_space
from study.trial.adapter import check_start
from study.trial.data import build_data
from study.trial.precision import check_supported


@dataclass(frozen=True)
class Plan:
    """Everything the Ray wiring and the summary need, checked."""

    options: StudyOptions
    argv: tuple[str, ...]
    name: str
    study_dir: Path
    space: dict
    objectives: list[str]
    facts: Facts  # model name -> its facts, for every model the study can run
    baselines: tuple[dict, ...] = ()
    time: StudyTime | None = None
    forked: bool = False  # trials are forked from the study's fork server (study.forkserver)
    gpus_per_trial: float = 0.0  # --gpus-per-trial as a number (unset and auto resolved)

    @property
    def worker_mb(self) -> float:
        """What each trial process holds beyond a plain one (the memory estimate's term)."""
        return worker_mb(self.forked)

    @property
    def max_t(self) -> int:
        """ASHA's most steps per trial: --max-t, else the space's fixed train.steps."""
        steps = flat_leaves(self.space).get("train.steps")
        return self.options.max_t or (steps if isinstance(steps, int) else DEFAULT_MAX_T)

    @property
    def grace(self) -> int:
        """ASHA's steps before any stop: --grace, else the space's eval.every."""
        every = flat_leaves(self.space).get("eval.every")
        return self.options.grace or (every if isinstance(every, int) else max(1, self.max_t // 4))


def check_config(values: dict) -> TrialConfig:
    """A dotted config as TrialConfig, with errors as UsageError."""
    try:
        return TrialConfig.from_dict(values)
    except ValueError as err:
        raise UsageError(str(err)) from None


def study_record(plan: Plan) -> dict:
    """What study.json keeps: the command, the resolved space, objectives, baselines, ASHA's
    settings."""
    return {
        "command": ["python", "-m", "study.tune", *plan.argv],
        "space": plan.space,
        "fixed": {"baselines": list(plan.baselines)},
        "objectives": plan.objectives,
        # ASHA's settings as make_search uses them (the first objective, grace clipped to
        # max_t): the report's rung-to-final correlation (analysis.rungs) reads them
        "asha": None if plan.options.scheduler == "none" else {
            "metric": plan.objectives[0], "grace": min(plan.grace, plan.max_t),
            "reduction_factor": plan.options.reduction_factor, "max_t": plan.max_t},
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cwd": os.getcwd(),
    }


def _check_storage(path: Path) -> None:
    try:
        check_output_dir(path, "--storage-path")
    except ValueError as err:
        raise UsageError(str(err)) from None


def _check_dashboard(options: StudyOptions) -> None:
    auth = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if options.dashboard and auth != "token":
        raise UsageError(
            f"--dashboard needs Ray's token authentication, but RAY_AUTH_MODE={auth}; "
            "unset it or set RAY_AUTH_MODE=token"
        )
    if options.dashboard and options.address:
        raise UsageError(
            "--dashboard starts the dashboard of a new local Ray; a cluster joined with --address "
            "has its own (start it with `ray start --head --dashboard-host 127.0.0.1`)"
        )


def _choices(leaves: dict, key: str) -> list:
    leaf = leaves.get(key)
    if isinstance(leaf, dict) and "choice" in leaf:
        return list(leaf["choice"])
    return [leaf] if leaf is not None else []


def _largest(leaves: dict, key: str, fallback: int) -> int:
    """The largest value an integer field can take in the space: fixed, the largest choice or
    a randint's upper end (``fallback`` for anything else)."""
    leaf = leaves.get(key, fallback)
    if isinstance(leaf, dict):
        values = leaf.get("choice") or leaf.get("randint") or []
        leaf = max((v for v in values if isinstance(v, int) and not isinstance(v, bool)),
                   default=fallback)
    return leaf if isinstance(leaf, int) and not isinstance(leaf, bool) else fallback


def _baselines(space: dict, sizes: list, facts: Facts, max_mem_mb: float | None,
               extra_mb: float, full: bool = True) -> list:
    """The base model and (``full``) one full fine-tuning run of each model, at the default data
    size (or the median); 16-bit."""
    default_size = TrialConfig().data.size
    size = default_size if default_size in sizes else sorted(sizes)[len(sizes) // 2]
    common = {**sample_point(space), "data.size": size, "quant.bits": 16,
              "quant.scheme": None}
    out = []
    for model in facts:
        # full fine-tuning starts from the base model: an adapter's start (lora.init_from) is
        # the base baseline's, which evaluates that adapter untrained
        for method, extra in (("base", {}), ("full", {"train.lr": FULL_BASELINE_LR,
                                                      "lora.init_from": None}))[:1 + full]:
            cfg = check_config({**common, "model.name": model, "method": method, **extra})
            estimate = (gate_cfg(cfg, facts[model], extra_mb)
                        if max_mem_mb and method != "base" else 0)
            if max_mem_mb and estimate > max_mem_mb:
                print(
                    f"study.tune: the {method} baseline of {model} is not run: estimated peak "
                    f"with its error band {estimate:.0f} MB > --max-mem-mb {max_mem_mb:.0f}"
                )
                continue
            out.append(cfg.to_dict())
    return out


def _facts_of_models(space: dict, leaves: dict, base_point: TrialConfig, sizes: list) -> Facts:
    """Each model's facts for the memory estimate, with the space's ranks and inits checked
    against the model and its data built (the source at the largest size, with its tokenizer)."""
    targets = _choices(leaves, "lora.targets") or [base_point.lora.targets]
    facts = {}
    models = _choices(leaves, "model.name") or [base_point.model.name]
    for model in models:
        point = {**sample_point(space), "model.name": model}
        facts[model], tokenizer = model_facts(check_config(point), targets)
        try:
            check_space_ranks(space, facts[model], model)
            check_space_inits(space, facts[model])
            # the source and the largest size, with this model's tokenizer; warms the cache
            build_data(check_config({**point, "data.size": max(sizes)}).data, tokenizer)
        except ValueError as err:
            raise UsageError(f"{model}: {err}" if len(models) > 1 else str(err)) from None
    return facts


def _check_budget(max_mem_mb: float | None, space: dict, facts: Facts, extra_mb: float) -> None:
    """UsageError when --max-mem-mb leaves no configuration of the space to run."""
    if max_mem_mb:
        smallest = smallest_estimate(space, facts, extra_mb)
        if smallest is not None and smallest > max_mem_mb:
            raise UsageError(
                f"--max-mem-mb {max_mem_mb:g}: every configuration of the space is "
                f"estimated above it (the smallest needs about {smallest:.0f} MB with the "
                "estimate's error band)"
            )


def _study_dir(options: StudyOptions, argv: list[str]) -> tuple[StudyOptions, Path, dict | None]:
    """(options, study directory, recorded study.json for --resume); the name is checked."""
    name = options.name or f"{Path(options.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name.startswith("."):
        raise UsageError(f"--name must be a plain directory name, got {name!r}")
    study_dir = options.storage_path / name
    if not options.resume:
        _check_new(study_dir)
        return options, study_dir, None
    if not options.name:
        raise UsageError("--resume needs --name of the study to continue")
    if not record.has_study(study_dir):
        raise UsageError(f"no study to resume at {study_dir} (no {record.STUDY})")
    options, recorded = recorded_options(options, argv, study_dir)
    try:  # the searcher continues from the journal: it must be readable (a cut last line is)
        journal.load(study_dir)
    except record.RecordError as err:
        raise UsageError(f"cannot resume: {err}") from None
    return options, study_dir, recorded


def _check_dtypes(dtypes: list[str]) -> None:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for dtype in dtypes:
        try:
            check_supported(dtype, device)
        except ValueError as err:
            raise UsageError(str(err)) from None


def _check_new(study_dir: Path) -> None:
    if study_dir.exists() and any(study_dir.iterdir()):
        raise UsageError(f"study {study_dir} already exists; use --resume or another --name")


class StudyLock:
    """The study's lock (one process writes a study) and a note of who holds it."""

    def __init__(self, study_dir: Path, argv: tuple[str, ...] = ()) -> None:
        import filelock

        self.study_dir, self.argv = study_dir, argv
        self._lock = filelock.FileLock(record.lock_path(study_dir))

    def acquire(self) -> None:
        """Take the lock now, or UsageError naming the process that holds it."""
        import filelock

        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise UsageError(
                f"study {self.study_dir} is being run by another process ({self._holder()}); "
                "wait for it to end (then --resume it if it stopped early) or give another --name"
            ) from None
        owner = {
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shlex.join(["python", "-m", "study.tune", *self.argv]),
        }
        record.write_json(record.owner_path(self.study_dir), owner)

    def _holder(self) -> str:
        try:
            owner = record.read_json(record.owner_path(self.study_dir))
            return f"pid {owner['pid']}, since {owner['since']}: {owner['command']}"
        except (record.RecordError, KeyError, TypeError):
            return "pid unknown"

    def release(self) -> None:
        """Give the lock up (a kill does the same: the OS drops it with the process)."""
        record.owner_path(self.study_dir).unlink(missing_ok=True)
        self._lock.release()


def claim(plan: Plan) -> StudyLock:
    """Take the study's lock, or UsageError; returns the lock.

    Held by the driver for the whole run; the OS releases it when the process dies, so a study
    killed with -9 can be resumed at once. A new study is checked again under the lock: two
    started together with one --name cannot both pass the check made before it.
    """
    plan.study_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = StudyLock(plan.study_dir, plan.argv)
    lock.acquire()
    if not plan.options.resume:
        try:
            _check_new(plan.study_dir)
        except UsageError:
            lock.release()
            raise
    return lock


def plan_study(options: StudyOptions, argv: list[str]) -> Plan:
    """Check every input before anything is started or written (UsageError on the first)."""
    check_counts(options)
    parse_resources(options.resource)
    _check_dashboard(options)
    options, study_dir, recorded = _study_dir(options, argv)
    _check_storage(options.storage_path)
    objectives = parse_objectives(options.objective)
    space = study_space(options, objectives, recorded)
    if problem := check_search(options.search, space):
        raise UsageError(problem)
    if options.num_samples is None:  # a grid search runs its whole grid unless told otherwise
        size = grid_size(space) if options.search == "grid" else None
        options = dataclasses.replace(options, num_samples=size or DEFAULT_NUM_SAMPLES)
    leaves = flat_leaves(space)
    base_point = check_config(sample_point(space))
    check_objectives_fit_task(objectives, _choices(leaves, "data.task"))
    for start in _choices(leaves, "lora.init_from") or [base_point.lora.init_from]:
        try:  # the adapter a study starts from, before Ray starts (its shapes: in the trial)
            check_start(check_config({**sample_point(space), "lora.init_from": start}))
        except ValueError as err:
            raise UsageError(str(err)) from None
    sizes = _choices(leaves, "data.size") or [base_point.data.size]
    facts = _facts_of_models(space, leaves, base_point, sizes)
    if options.address is None:  # this machine trains: bf16 only where it computes bf16
        _check_dtypes(_choices(leaves, "train.dtype") or [base_point.train.dtype])
    # trials forked from a pre-imported server (study.forkserver) or started in Ray workers:
    # what each trial process holds and how long it takes to start depend on it
    gpus = gpu_share.resolve(options.gpus_per_trial, [f.hf_config for f in facts.values()],
                             _largest(leaves, "train.batch_size", base_point.train.batch_size),
                             _largest(leaves, "data.seq_len", base_point.data.seq_len))
    forked = forks.usable(options.address, gpus)
    extra_mb = worker_mb(forked)
    _check_budget(options.max_mem_mb, space, facts, extra_mb)
    baselines = [] if options.no_baselines else _baselines(
        space, sizes, facts, options.max_mem_mb, extra_mb, full=not options.no_full_baseline)
    name = study_dir.name
    repeats = options.repeats  # every configuration and baseline runs that many times
    runs = [b for b in baselines for _ in range(baseline_repeats(b, repeats))]
    estimated = study_time(space, facts, options.num_samples * repeats, runs,
                           options.max_concurrent, forked)
    return Plan(options, tuple(argv), name, study_dir, space, objectives, facts, tuple(baselines),
                estimated, forked, gpus)

