"""python -m study.reproduce TRIAL_DIR: re-run a trial from its directory and compare.

    python -m study.reproduce results/demo/search/64dac671
    python -m study.reproduce runs/x --out /tmp/again --rtol 1e-3    # GPU: a tolerance
    python -m study.reproduce runs/x --threads 8      # faster, but reported as not like for like

The trial's ``config.json`` is run again with the environment of its ``env.json`` (seed, torch
thread count; the compute dtype follows the config's ``train.dtype`` on the same hardware), up to
the step it reached (a trial ASHA stopped at step N is re-run to N; one that errored, until it
fails or ends, and the failure is compared too). Its learning curve (train and eval loss at every
evaluation) and final quality metrics are compared with the recorded ones:

- CPU, same torch build, same thread count: the losses must be **bitwise equal** (exit 0).
- CUDA: kernels such as atomics in attention backward are not bitwise deterministic; ``--rtol``
  (default 1e-3 on CUDA) is the documented tolerance.
- Anything that changes floating-point results (thread count, device, compute dtype, torch
  version, CPU model) is reported first, and the verdict says the comparison is not like for like
  (exit 3) instead of silently comparing. Different numbers on a like-for-like run: exit 1.

Resource metrics (time, memory) are shown side by side but not judged.
"""

from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from study import metrics as M
from study import record
from study.cli import OneLineParser, check_threads
from study.outdir import check_output_dir

CURVE_KEYS = (M.TRAIN_LOSS, M.EVAL_LOSS, M.EXACT_MATCH, *M.CLASSIFY_EVAL, *M.PREFERENCE_EVAL)
FINAL_KEYS = (M.EVAL_LOSS, M.EXACT_MATCH, M.TEST_LOSS, M.TEST_EXACT_MATCH, *M.CLASSIFY_EVAL,
              M.TEST_ACCURACY, M.TEST_F1_MACRO, M.TEST_F1_WEIGHTED, *M.PREFERENCE_EVAL,
              *M.PREFERENCE_TEST)
SHOWN_RESOURCES = (M.PEAK_MEM_MB, M.TRAIN_TOKENS_PER_S, M.STEP_MS, M.TRAIN_S)
# env.json fields whose change alters floating-point results (attn_implementation where the
# record has it: records before it was kept ran the model's default)
LIKE_FOR_LIKE = ("threads", "device", "compute_dtype", "cpu", "gpu", "attn_implementation")


class _Stop(Exception):
    """Raised from the report hook once the recorded last step is reached."""


def _read(read, trial_dir: Path):
    """A record of the trial, or ValueError in one line (what is missing or damaged)."""
    try:
        return read(trial_dir)
    except record.RecordError as err:
        raise ValueError(f"{err.path} is {err.problem}: not a readable trial record") from None


def _read_curve(trial_dir: Path) -> list[dict]:
    points, damaged = _read(record.read_curve, trial_dir)
    if damaged:
        where = record.curve_path(trial_dir)
        raise ValueError(f"{where}: line {damaged[0]} is damaged; the recorded curve is incomplete")
    return points


def environment_differences(recorded: dict, now: dict) -> list[str]:
    """What differs between two env.json records in ways that change the numbers."""
    out = [
        f"{key}: recorded {recorded.get(key)!r}, now {now.get(key)!r}"
        for key in LIKE_FOR_LIKE
        if recorded.get(key) != now.get(key)
        and (key != "attn_implementation" or key in recorded)
    ]
    # a compiled step rounds (and draws dropout) otherwise than eager; no record: it ran eager
    compiled_then, compiled_now = ((env.get("compile") or {}).get("chosen", "off")
                                   for env in (recorded, now))
    if compiled_then != compiled_now:
        out.append(f"train.compile chose: recorded {compiled_then}, now {compiled_now}")
    torch_then = (recorded.get("packages") or {}).get("torch")
    torch_now = (now.get("packages") or {}).get("torch")
    if torch_then != torch_now:
        out.append(f"torch: recorded {torch_then}, now {torch_now}")
    return out


def compare(recorded: list[dict], again: list[dict], rtol: float) -> list[str]:
    """Differences between two curves (or two final-metrics lists) at every recorded point."""
    out = []
    by_step = {p[M.STEP]: p for p in again}
    for point in recorded:
        step = point[M.STEP]
        other = by_step.get(step)
        if other is None:
            out.append(f"step {step}: not reached by the re-run")
            continue
        for key in point:
            if key == M.STEP or not isinstance(point[key], (int, float)):
                continue
            a, b = point[key], other.get(key)
            if b is None or not _equal(a, b, rtol):
                out.append(f"step {step} {key}: recorded {a!r}, re-run {b!r}")
    return out


def _equal(a: float, b: float, rtol: float) -> bool:
    if rtol == 0:
        return a == b or (math.isnan(a) and math.isnan(b))
    return math.isclose(a, b, rel_tol=rtol, abs_tol=rtol * 1e-3)


def _recorded_failure(trial_dir: Path) -> str | None:
    """The error a study recorded for the trial (status.json), if it errored."""
    status = record.read_status(trial_dir)
    return status.get("reason") if status.get("status") == record.ERRORED else None


@dataclass
class _Run:
    """One run of the trial, as compared: the recorded one or the re-run."""

    env: dict  # its env.json
    curve: list[dict]  # its learning curve ([] for a re-run that failed before evaluating)
    metrics: dict  # its final metrics (recorded) or its last report (re-run)
    failure: str | None  # why it errored, or None


def _recorded_run(trial_dir: Path):
    """(the trial's config, its recorded run), or ValueError in one line."""
    from study.config import TrialConfig

    config = TrialConfig.from_dict(_read(record.read_config, trial_dir))
    env = _read(record.read_env, trial_dir)
    curve = _read_curve(trial_dir)
    final = _read(record.read_metrics, trial_dir)
    if not curve:
        where = record.curve_path(trial_dir)
        raise ValueError(f"{where} is missing or empty: the trial never reported")
    return config, _Run(env, curve, final, _recorded_failure(trial_dir))


def _rerun(config, out_dir: Path, last_step: int, run_on: bool) -> _Run:
    """Run ``config`` again into ``out_dir`` up to ``last_step``, or with ``run_on`` (the trial
    errored) until it fails or ends, to see whether it fails the same way."""
    from study.trial.run import run_trial
    from study.trial.train import NonFiniteLossError

    latest: dict = {}

    def stop_at_recorded_step(metrics: dict, _checkpoint: str | None) -> None:
        latest.clear()
        latest.update(metrics)
        if not run_on and metrics[M.STEP] >= last_step:
            raise _Stop

    failure = None
    try:
        run_trial(config, report=stop_at_recorded_step, out_dir=out_dir)
    except _Stop:
        pass
    except NonFiniteLossError as err:  # a diverging trial: compare how far both got, and why
        failure = str(err)
    return _Run(_read(record.read_env, out_dir), _read_curve(out_dir), latest, failure)


def _differences(recorded: _Run, again: _Run, last_step: int, tolerance: float) -> list[str]:
    """Every loss, quality metric and outcome of the re-run that differs from the record."""
    diffs = compare(
        [{k: v for k, v in p.items() if k in (M.STEP, *CURVE_KEYS)} for p in recorded.curve],
        again.curve,
        tolerance,
    )
    if not again.failure:  # a re-run that failed has no final metrics; its curve shows how far
        final = recorded.metrics
        final_point = {M.STEP: last_step, **{k: final[k] for k in FINAL_KEYS if k in final}}
        diffs += compare([final_point], [{M.STEP: last_step, **again.metrics}], tolerance)
    if again.failure != recorded.failure:
        diffs.append(
            f"outcome: recorded {recorded.failure or 'no error'}, "
            f"re-run {again.failure or 'no error'}"
        )
    return diffs


def _verdict(
    trial_dir: Path, out_dir: Path, recorded: _Run, again: _Run, last_step: int, tolerance: float
) -> tuple[int, str]:
    """(exit code, report text): the re-run, the resources side by side, every difference and
    the verdict (3: not like for like, 1: not reproduced, 0: reproduced)."""
    how = "bitwise" if tolerance == 0 else f"within rtol {tolerance:g}"
    lines = [
        f"Re-ran {trial_dir} to step {last_step} in {out_dir} "
        f"({again.env.get('device')}, {again.env.get('threads')} threads, "
        f"{again.env.get('compute_dtype')}); comparing {how}.",
    ]
    for key in SHOWN_RESOURCES:
        lines.append(
            f"  {key}: recorded {recorded.metrics.get(key)}, re-run {again.metrics.get(key)} "
            "(not judged)"
        )
    diffs = _differences(recorded, again, last_step, tolerance)
    if again.failure and again.failure == recorded.failure:
        lines.append(f"  both runs ended with: {again.failure}")
    lines += [f"  differs: {d}" for d in diffs]
    if env_diffs := environment_differences(recorded.env, again.env):
        lines += [f"  environment differs: {d}" for d in env_diffs]
        lines.append(
            "NOT like for like: the environment changed (above), so the numbers are not expected "
            f"to match {how}; {len(diffs)} differences listed."
        )
        return 3, "\n".join(lines)
    if diffs:
        lines.append(f"NOT reproduced: {len(diffs)} values differ ({how}).")
        return 1, "\n".join(lines)
    points = sum(isinstance(p.get(k), (int, float)) for p in recorded.curve for k in CURVE_KEYS)
    lines.append(f"Reproduced: every loss and quality metric is equal {how} ({points} values).")
    return 0, "\n".join(lines)


def reproduce(
    trial_dir: Path, out_dir: Path, rtol: float | None = None, threads: int | None = None
) -> tuple[int, str]:
    """Re-run the trial into ``out_dir``; return (exit code, report text).

    ``threads`` overrides the recorded thread count (reported as an environment change).
    """
    import torch

    config, recorded = _recorded_run(trial_dir)
    last_step = recorded.curve[-1][M.STEP]
    threads = threads or recorded.env.get("threads")
    if isinstance(threads, int) and threads > 0:
        torch.set_num_threads(threads)  # reductions split by thread count: part of the result
    cuda = torch.cuda.is_available()
    tolerance = rtol if rtol is not None else (1e-3 if cuda else 0.0)
    again = _rerun(config, out_dir, last_step, run_on=recorded.failure is not None)
    return _verdict(trial_dir, out_dir, recorded, again, last_step, tolerance)


def parse_args(argv: list[str] | None = None):
    """The command line (a bad value: one line, exit code 2)."""
    parser = OneLineParser.for_module("python -m study.reproduce", __doc__)
    parser.add_argument(
        "trial_dir", type=Path, help=f"a trial directory ({record.CONFIG}, {record.ENV})"
    )
    parser.add_argument("--out", type=Path, help="where the re-run goes (default: a temp dir)")
    parser.add_argument(
        "--rtol", type=float, help="relative tolerance (default 0 on CPU: bitwise; 1e-3 on CUDA)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: the recorded count; another is reported)",
    )
    args = parser.parse_args(argv)
    if args.rtol is not None and args.rtol < 0:
        parser.error(f"--rtol must be >= 0, got {args.rtol:g}")
    try:
        check_threads(args.threads)
        if args.out is not None:  # nothing is overwritten
            check_output_dir(args.out, "--out", must_be_empty=True)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    """Re-run and compare; bad input -> one line, exit code 2."""
    args = parse_args(argv)
    try:
        if not record.has_config(args.trial_dir):
            raise ValueError(f"{args.trial_dir} is not a trial directory (no {record.CONFIG})")
        if args.out is None:
            with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
                code, text = reproduce(args.trial_dir, Path(tmp), args.rtol, args.threads)
        else:
            code, text = reproduce(args.trial_dir, args.out, args.rtol, args.threads)
    except ValueError as err:
        print(f"study.reproduce: error: {err}", file=sys.stderr)
        return 2
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
