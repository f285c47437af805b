"""python -m study.tune: a LoRA hyperparameter study with Optuna (TPE) + ASHA on Ray Tune.

    python -m study.tune                                   # bundled model, skills, `default` space
    python -m study.tune --space smoke --num-samples 6 --name first-look
    python -m study.tune --objective exact_match,peak_mem_mb --max-mem-mb 3000
    python -m study.tune --name my-study --resume          # continue after Ctrl-C or a crash

Results go to ``<storage-path>/<name>/``: ``study.json`` (command line, resolved search space,
schema version), ``search/<trial>/`` for the searched trials and ``baselines/<trial>/`` for the
``base`` model and one ``full`` fine-tuning run. Each trial directory holds the files of
``run_trial`` plus ``status.json``. Build the report with ``python -m analysis report DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from study import metrics as M
from study.cli import OneLineParser
from study.config import TrialConfig

SCHEMA_VERSION = 1


class UsageError(ValueError):
    """Bad input caught before Ray starts: one line, exit code 2, no result directory."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = OneLineParser.for_module("python -m study.tune", __doc__)
    p.add_argument(
        "--space",
        default="default",
        help="built-in search space (default, smoke, seeds-qwen2) or a YAML file",
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
    p.add_argument("--num-samples", type=int, default=8, help="searched trials (default 8)")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Check everything, then run the study; bad input -> one line, exit code 2."""
    args = parse_args(argv)
    from study.tune_run import plan_study, run_study

    try:
        plan = plan_study(args, argv if argv is not None else sys.argv[1:])
    except (UsageError, ValueError) as err:
        print(f"study.tune: error: {err}", file=sys.stderr)
        return 2
    return run_study(plan)


def write_study_json(
    study_dir: Path, argv: list[str], space: dict, objectives: list[str], base: dict
) -> None:
    """The study's own record: command, resolved space, objectives, schema version."""
    study_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "schema_version": SCHEMA_VERSION,
        "command": ["python", "-m", "study.tune", *argv],
        "space": space,
        "fixed": base,
        "objectives": objectives,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cwd": os.getcwd(),
    }
    tmp = study_dir / ".study.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, study_dir / "study.json")


def parse_sets(items: list[str]) -> dict:
    """--set KEY=VALUE pairs -> dotted dict (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def check_config(values: dict) -> TrialConfig:
    """A dotted config as TrialConfig, with errors as UsageError."""
    try:
        return TrialConfig.from_dict(values)
    except ValueError as err:
        raise UsageError(str(err)) from None


if __name__ == "__main__":
    sys.exit(main())
