"""Plan a study (every check before Ray starts) and run it (Tuner, baselines, summary)."""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from study import metrics as M
from study.callbacks import LiveTable, StatusWriter, read_status
from study.config import TrialConfig, flatten
from study.tune import UsageError, check_config, parse_sets, write_study_json

SELECTABLE_QUALITY = (M.EVAL_LOSS, M.EVAL_PPL, M.EXACT_MATCH)
# start_mem_mb is context, not a goal; peak_reserved_mb exists on CUDA only.
OBJECTIVES = SELECTABLE_QUALITY + tuple(
    m for m in M.RESOURCES if m not in (M.START_MEM_MB, M.PEAK_RESERVED_MB)
)


@dataclass
class ModelFacts:
    """What the memory estimate and target checks need to know about the model."""

    total_params: int
    hidden: int
    layers: int
    vocab: int
    target_dims: dict[str, list[tuple[int, int]]]  # target spec -> (in, out) of each module


@dataclass
class Plan:
    """Everything run_study needs, checked."""

    args: object
    argv: list[str]
    name: str
    study_dir: Path
    space: dict
    objectives: list[str]
    facts: ModelFacts
    baselines: list[dict] = field(default_factory=list)


def parse_resources(items: list[str]) -> dict[str, float]:
    """--resource NAME=AMOUNT pairs -> {name: amount}."""
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


def _check_counts(args) -> None:
    checks = [
        ("--num-samples", args.num_samples, 1),
        ("--max-concurrent", args.max_concurrent, 1),
        ("--max-t", args.max_t, 1),
        ("--grace", args.grace, 1),
        ("--cpus-per-trial", args.cpus_per_trial, 0),
        ("--gpus-per-trial", args.gpus_per_trial, 0),
        ("--max-failures", args.max_failures, 0),
        ("--time-budget-s", args.time_budget_s, 1e-9),
        ("--max-mem-mb", args.max_mem_mb, 1),
    ]
    for flag, value, low in checks:
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low:g}, got {value:g}")
    if args.reduction_factor <= 1:
        raise UsageError(f"--reduction-factor must be > 1, got {args.reduction_factor:g}")


def _objectives(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in OBJECTIVES:
            raise UsageError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    if not names or names[0] not in SELECTABLE_QUALITY:
        raise UsageError(
            f"the first objective is ASHA's stopping metric and must be a quality "
            f"metric ({', '.join(SELECTABLE_QUALITY)}), got {text!r}"
        )
    if len(set(names)) != len(names):
        raise UsageError(f"--objective lists a metric twice: {text!r}")
    return names


def _check_storage(path: Path) -> None:
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--storage-path {path} is not writable (checked {probe})")


def _apply_sets(space: dict, sets: dict) -> dict:
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


def _choices(space_leaves: dict, key: str) -> list:
    leaf = space_leaves.get(key)
    if isinstance(leaf, dict) and "choice" in leaf:
        return list(leaf["choice"])
    return [leaf] if leaf is not None else []


def _model_facts(cfg: TrialConfig, target_specs: list) -> tuple[ModelFacts, object]:
    """Load (registry) or meta-build (hub) the model; resolve every target choice."""
    from lora_impl.inject import resolve_targets
    from study.models import REGISTRY, load_model

    if cfg.model.name in REGISTRY or Path(cfg.model.name).expanduser().is_dir():
        model, tokenizer = load_model(cfg.model.name)
    else:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        try:
            hf_config = AutoConfig.from_pretrained(cfg.model.name)
            tokenizer = AutoTokenizer.from_pretrained(cfg.model.name)
        except OSError:
            load_model(cfg.model.name)  # raises ModelNotFoundError with the registry names
            raise
        with torch.device("meta"):  # shapes and names only: no memory, no download of weights
            model = AutoModelForCausalLM.from_config(hf_config)
    dims = {}
    for spec in target_specs:
        target = TrialConfig.from_dict({"lora.targets": spec}).lora.target_spec
        names = resolve_targets(model, target)
        dims[spec] = [_in_out(model.get_submodule(n)) for n in names]
    c = model.config
    facts = ModelFacts(
        total_params=sum(p.numel() for p in model.parameters()),
        hidden=getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0),
        layers=getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 0),
        vocab=c.vocab_size,
        target_dims=dims,
    )
    return facts, tokenizer


def _in_out(module) -> tuple[int, int]:
    from lora_impl.layer import base_layer_dims

    in_f, out_f, _ = base_layer_dims(module)
    return in_f, out_f


def estimate_for(config: dict, facts: ModelFacts) -> float:
    """Estimated training peak (MB) of a nested Tune config."""
    from study.trainable import trial_config

    return estimate_cfg(trial_config(config), facts)


def estimate_cfg(cfg: TrialConfig, facts: ModelFacts) -> float:
    """Estimated training peak (MB) of a TrialConfig (see study.search.estimate_peak_mb)."""
    from study.search import estimate_peak_mb

    if cfg.method == "lora":
        trainable = sum(cfg.lora.rank * (i + o) for i, o in facts.target_dims[cfg.lora.targets])
    else:
        trainable = facts.total_params if cfg.method == "full" else 0
    return estimate_peak_mb(
        facts.total_params,
        trainable,
        cfg.quant.bits,
        cfg.train.batch_size,
        cfg.data.seq_len,
        facts.hidden,
        facts.layers,
        facts.vocab,
    )


def plan_study(args, argv: list[str]) -> Plan:
    """Check every input before anything is started or written (UsageError on the first)."""
    from search_spaces import SpaceError, flat_leaves, load_space, sample_point, validate
    from study.data import build_data

    _check_counts(args)
    parse_resources(args.resource)
    auth = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if args.dashboard and auth != "token":
        raise UsageError(
            f"--dashboard needs Ray's token authentication, but RAY_AUTH_MODE={auth}; "
            "unset it or set RAY_AUTH_MODE=token"
        )
    if args.dashboard and args.address:
        raise UsageError(
            "--dashboard starts the dashboard of a new local Ray; a cluster joined with --address "
            "has its own (start it with `ray start --head --dashboard-host 127.0.0.1`)"
        )
    space_name = Path(args.space).stem
    name = args.name or f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name.startswith("."):
        raise UsageError(f"--name must be a plain directory name, got {name!r}")
    study_dir = args.storage_path / name
    recorded = None
    if args.resume:
        if not args.name:
            raise UsageError("--resume needs --name of the study to continue")
        if not (study_dir / "study.json").is_file():
            raise UsageError(f"no study to resume at {study_dir} (no study.json)")
        recorded = _resume_settings(args, argv, study_dir)
    elif study_dir.exists() and any(study_dir.iterdir()):
        raise UsageError(f"study {study_dir} already exists; use --resume or another --name")
    _check_storage(args.storage_path)
    objectives = _objectives(args.objective)
    try:
        if recorded is not None:  # the space as the study resolved it when it started
            space = recorded["space"]
        else:
            space = _apply_sets(load_space(args.space), parse_sets(args.set))
            space = _apply_max_t(space, args.max_t)
        validate(space)
    except SpaceError as err:
        raise UsageError(str(err)) from None

    leaves = flat_leaves(space)
    base_point = check_config(sample_point(space))
    _check_objectives_fit_task(objectives, _choices(leaves, "data.task"))
    facts, tokenizer = _model_facts(
        base_point, _choices(leaves, "lora.targets") or [base_point.lora.targets]
    )
    if args.max_mem_mb:
        _check_some_config_fits(space, facts, args.max_mem_mb)
    sizes = _choices(leaves, "data.size") or [base_point.data.size]
    biggest = check_config({**sample_point(space), "data.size": max(sizes)})
    build_data(biggest.data, tokenizer)  # checks the source and size; warms the shared cache

    baselines = []
    if not args.no_baselines:
        default_size = TrialConfig().data.size
        size = default_size if default_size in sizes else sorted(sizes)[len(sizes) // 2]
        common = {**sample_point(space), "data.size": size, "quant.bits": 16}
        for method, extra in (("base", {}), ("full", {"train.lr": 3e-5})):
            cfg = check_config({**common, "method": method, **extra})
            estimate = estimate_cfg(cfg, facts) if args.max_mem_mb and method != "base" else 0
            if args.max_mem_mb and estimate > args.max_mem_mb:
                print(
                    f"study.tune: the {method} baseline is not run: estimated peak "
                    f"{estimate:.0f} MB > --max-mem-mb {args.max_mem_mb:.0f}"
                )
                continue
            baselines.append(cfg.to_dict())
    return Plan(args, argv, name, study_dir, space, objectives, facts, baselines)


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
}


def _resume_settings(args, argv: list[str], study_dir: Path) -> dict:
    """Fill ``args`` with the study-defining flags recorded in study.json; return the record.

    ``python -m study.tune --name X --resume`` continues X as it was started; repeating the
    original flags is allowed, changing one is refused (it would be another study).
    """
    from study.tune import parse_args

    try:
        record = json.loads((study_dir / "study.json").read_text())
        started = parse_args([str(a) for a in record["command"][3:]])
        if not {"space", "objectives"} <= record.keys():
            raise KeyError("space or objectives")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SystemExit):
        raise UsageError(f"{study_dir / 'study.json'} is not a readable study record") from None
    defaults = parse_args([])
    for dest, flag in STUDY_FLAGS.items():
        given, was = getattr(args, dest), getattr(started, dest)
        named = any(a == flag or a.startswith(f"{flag}=") for a in argv)
        if (named or given != getattr(defaults, dest)) and given != was:
            raise UsageError(
                f"--resume continues {study_dir.name} as it was started, with {flag} {was!r}; "
                f"got {given!r} (use another --name for a new study)"
            )
        setattr(args, dest, was)
    return record


def _apply_max_t(space: dict, max_t: int | None) -> dict:
    """--max-t is the most steps a trial runs: it sets train.steps (and drops train.epochs)."""
    from search_spaces import flat_leaves, is_distribution

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
    return _apply_sets(space, sets)


def _check_objectives_fit_task(objectives: list[str], tasks: list[str]) -> None:
    """exact_match exists for the skills task only (the one with checkable answers)."""
    tasks = tasks or [TrialConfig().data.task]
    if M.EXACT_MATCH in objectives and any(t != "skills" for t in tasks):
        other = next(t for t in tasks if t != "skills")
        raise UsageError(
            f"--objective {M.EXACT_MATCH} needs data.task=skills (checkable answers); this "
            f"space has data.task={other}: use eval_loss or eval_ppl"
        )


MEMORY_KEYS = (
    "method",
    "lora.rank",
    "lora.targets",
    "quant.bits",
    "train.batch_size",
    "data.seq_len",
)


def _check_some_config_fits(space: dict, facts: ModelFacts, limit: float) -> None:
    """Refuse --max-mem-mb when even the space's smallest configuration is estimated above it."""
    import itertools

    from search_spaces import flat_leaves, is_distribution, sample_point

    leaves, point = flat_leaves(space), sample_point(space)
    options = {}
    for key in MEMORY_KEYS:
        leaf = leaves.get(key)
        if is_distribution(leaf):
            ((kind, values),) = leaf.items()
            options[key] = values if kind == "choice" else [values[0]]  # a range: its low end
    smallest = None
    for combo in itertools.product(*options.values()):
        try:
            cfg = check_config({**point, **dict(zip(options, combo))})
        except UsageError:
            continue  # e.g. full fine-tuning with a 4-bit choice: never launched anyway
        estimate = estimate_cfg(cfg, facts)
        smallest = estimate if smallest is None else min(smallest, estimate)
    if smallest is not None and smallest > limit:
        raise UsageError(
            f"--max-mem-mb {limit:g}: every configuration of the space is estimated above it "
            f"(the smallest needs about {smallest:.0f} MB)"
        )


def _ray_init(args) -> None:
    import ray

    # Token auth: Ray 2.60 turns it on for a new local cluster when RAY_AUTH_MODE is unset (and
    # refreshes its cached config; setting the variable here, after ray is imported, would leave
    # the driver without its token). plan_study refuses --dashboard with any other mode.
    kwargs = {
        "include_dashboard": bool(args.dashboard),
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": "ERROR",
    }
    # Loopback only. The Docker image sets 0.0.0.0: inside a container that is the container's
    # own interface, which `docker run -p 127.0.0.1:8265:8265` publishes to the host's loopback.
    host = os.environ.get("LORA_STUDY_DASHBOARD_HOST", "127.0.0.1")
    if args.dashboard:
        kwargs.update(dashboard_host=host)
    context = ray.init(address=args.address, **kwargs)
    if args.dashboard:
        print(f"Ray dashboard: http://{context.dashboard_url} (token auth; bound to {host})")


def _resources(args) -> dict:
    import torch

    gpus = (
        args.gpus_per_trial if args.gpus_per_trial is not None else float(torch.cuda.is_available())
    )
    cpus = args.cpus_per_trial or max(1.0, (os.cpu_count() or 1) / args.max_concurrent)
    return {"cpu": cpus, "gpu": gpus, **parse_resources(args.resource)}


def replay_curves(experiment_dir: Path) -> list[tuple[str, list[dict]]]:
    """(trial id, recorded curve) of every trial directory, for rebuilding ASHA's rungs."""
    out = []
    for trial_dir in sorted(Path(experiment_dir).glob("*/curve.jsonl")):
        points = [json.loads(line) for line in trial_dir.read_text().splitlines() if line.strip()]
        out.append((trial_dir.parent.name, points))
    return out


def restore_missing_checkpoints(experiment_dir: Path) -> list[Path]:
    """Re-create checkpoints the experiment state names but a kill left deleted; return them.

    With ``num_to_keep=1`` Ray deletes a trial's previous checkpoint when it registers a new one,
    and snapshots the experiment state a moment later. A driver killed in between leaves a state
    that names the deleted checkpoint, and ``Tuner.restore`` then fails that trial ("does not
    exist on storage anymore"). The newer checkpoint is in the trial directory: copy it under
    the old name, so the trial resumes from its latest progress. Reads Ray's own state file,
    which holds pickles: as with ``Tuner.restore``, only for storage paths you trust.
    """
    import pickle
    import shutil

    states = sorted(Path(experiment_dir).glob("experiment_state-*.json"))
    if not states:
        return []
    repaired = []
    for _, runtime in json.loads(states[-1].read_text())["trial_data"]:
        blob = json.loads(runtime).get("checkpoint_manager") or {}
        if "value" not in blob:
            continue
        latest = pickle.loads(bytes.fromhex(blob["value"])).latest_checkpoint_result
        if latest is None or latest.checkpoint is None:
            continue
        missing = Path(latest.checkpoint.path)
        newer = sorted(p for p in missing.parent.glob("checkpoint_*") if p.name > missing.name)
        if not missing.exists() and newer:
            shutil.copytree(newer[-1], missing)
            repaired.append(missing)
    return repaired


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _run_config(plan: Plan, experiment: str, callbacks: list):
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=experiment,
        storage_path=str(plan.study_dir.resolve()),
        verbose=0,
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        failure_config=FailureConfig(max_failures=plan.args.max_failures),
        callbacks=callbacks,
    )


def _trainable(plan: Plan, experiment_dir: Path):
    from ray import tune

    from study.trainable import trainable

    fn = tune.with_parameters(
        trainable, experiment_dir=str(experiment_dir.resolve()), max_mem_mb=plan.args.max_mem_mb
    )
    return tune.with_resources(fn, _resources(plan.args))


def _fit(plan: Plan, experiment: str, make_tuner) -> None:
    from ray import tune

    exp_dir = plan.study_dir / experiment
    budget = plan.args.time_budget_s if experiment == "search" else None
    callbacks = [StatusWriter(exp_dir, budget), LiveTable(exp_dir, label=f"[{experiment}]\n")]
    trainable = _trainable(plan, exp_dir)
    if (exp_dir / "tuner.pkl").is_file():
        for path in restore_missing_checkpoints(exp_dir):
            print(f"study.tune: {path.parent.name}: resuming from its newer checkpoint")
        tuner = tune.Tuner.restore(str(exp_dir.resolve()), trainable=trainable, resume_errored=True)
    else:
        tuner = make_tuner(trainable, _run_config(plan, experiment, callbacks))
    tuner.fit()


def run_study(plan: Plan) -> int:
    """Start Ray, run the baselines and the search, print the summary."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search_spaces import to_tune, tune_points
    from study.search import make_search
    from study.summary import print_summary

    if not plan.args.resume:
        write_study_json(
            plan.study_dir, plan.argv, plan.space, plan.objectives, {"baselines": plan.baselines}
        )
    _ray_init(plan.args)
    args = plan.args
    try:
        if plan.baselines and not _all_finished(plan.study_dir / "baselines", 2):

            def baseline_tuner(trainable, run_config):
                return tune.Tuner(
                    trainable,
                    run_config=run_config,
                    param_space={"baseline": tune.grid_search(plan.baselines)},
                    tune_config=tune.TuneConfig(
                        trial_dirname_creator=_trial_dirname,
                        max_concurrent_trials=args.max_concurrent,
                    ),
                )

            _fit(plan, "baselines", baseline_tuner)

        leaves_steps = flatten(plan.space).get("train.steps")
        max_t = args.max_t or (leaves_steps if isinstance(leaves_steps, int) else 1000)
        every = flatten(plan.space).get("eval.every")
        grace = args.grace or (every if isinstance(every, int) else max(1, max_t // 4))

        def search_tuner(trainable, run_config):
            accept = (
                functools.partial(_over_budget, facts=plan.facts, limit=args.max_mem_mb)
                if args.max_mem_mb
                else None
            )
            searcher, scheduler = make_search(
                plan.objectives,
                seed=args.seed,
                max_t=max_t,
                grace=grace,
                reduction_factor=args.reduction_factor,
                points=tune_points(plan.space),
                study_name=plan.name,
                accept=accept,
                record_path=str(plan.study_dir.resolve() / "optuna.json"),
                replay=functools.partial(replay_curves, plan.study_dir / "search"),
                num_samples=args.num_samples,
            )
            return tune.Tuner(
                trainable,
                param_space=to_tune(plan.space),
                run_config=run_config,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=args.max_concurrent),
                    scheduler=scheduler,
                    num_samples=args.num_samples,
                    time_budget_s=args.time_budget_s,
                    trial_dirname_creator=_trial_dirname,
                ),
            )

        _fit(plan, "search", search_tuner)
    finally:
        import ray

        ray.shutdown()
    print_summary(plan)
    return 0


def _over_budget(config: dict, facts: ModelFacts, limit: float) -> str | None:
    estimate = estimate_for(config, facts)
    if estimate > limit:
        return f"estimated peak {estimate:.0f} MB > --max-mem-mb {limit:.0f}"
    return None


def _all_finished(exp_dir: Path, count: int) -> bool:
    dirs = [d for d in exp_dir.glob("*") if d.is_dir()] if exp_dir.is_dir() else []
    done = [d for d in dirs if read_status(d).get("status") in ("finished", "errored")]
    return len(done) >= count
