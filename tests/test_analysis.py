"""analysis: the loader, `python -m analysis pareto|best`, and what analysis may import.

The study is conftest's `multi_study` (6 searched trials on tiny-llama, ASHA stops, the base
and full baselines), made once per session and shared with test_tune.py: tests that damage
files work on a copy.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.load import NotAStudyError, ResultWarning, load_studies, load_study
from tests.conftest import copy_study

ROOT = Path(__file__).resolve().parents[1]


def trial_dirs(study: Path) -> list[Path]:
    return sorted(p.parent for p in study.glob("*/*/config.json"))


def test_loader_one_row_per_trial_with_statuses_configs_and_metrics(multi_study):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultWarning)  # a healthy study loads without warnings
        data = load_study(multi_study)
    trials = data.trials.set_index("trial")
    dirs = trial_dirs(multi_study)
    assert len(trials) == len(dirs) == 8 and trials.index.is_unique
    assert (trials["study"] == "multi").all()
    for d in dirs:
        row = trials.loc[d.name]
        status = json.loads((d / "status.json").read_text())
        config = json.loads((d / "config.json").read_text())
        metrics = json.loads((d / "metrics.json").read_text())
        assert row["status"] == status["status"] and row["status_step"] == status["step"]
        assert row["group"] == d.parent.name and row["baseline"] == (d.parent.name == "baselines")
        assert row["method"] == config["method"] and row["bits"] == config["quant"]["bits"]
        assert row["data_size"] == config["data"]["size"] and row["lr"] == config["train"]["lr"]
        assert row["seed"] == config["seed"]
        if config["method"] == "lora":
            assert (row["rank"], row["alpha"]) == (config["lora"]["rank"], config["lora"]["alpha"])
            assert row["targets"] == config["lora"]["targets"]
        else:
            assert pd.isna(row["rank"]) and pd.isna(row["targets"])
        for name in ("eval_loss", "peak_mem_mb", "test_loss", "train_s", "trainable_params"):
            expected = metrics.get(name)
            assert pd.isna(row[name]) if expected is None else row[name] == expected, name
        curve = [json.loads(line) for line in (d / "curve.jsonl").read_text().splitlines()]
        assert row["best_eval_loss"] == min(p["eval_loss"] for p in curve)
        assert len(data.curves[data.curves["trial"] == d.name]) == len(curve) == row["evals"]
    counts = trials[trials["group"] == "search"]["status"].value_counts()
    assert counts.get("stopped", 0) >= 1 and counts.get("finished", 0) >= 1
    bad = trials[trials["lr"] == 1e-7]
    assert len(bad) == 1 and bad["status"].item() == "stopped"
    assert sorted(trials[trials["baseline"]]["method"]) == ["base", "full"]
    # finished trials carry test metrics, stopped ones do not (they never reached the end)
    assert trials[trials["status"] == "finished"]["test_loss"].notna().all()
    assert trials[trials["status"] == "stopped"]["test_loss"].isna().all()


def test_loader_reports_an_errored_trial_with_its_reason(errored_study):
    """conftest's `errored_study`: the study code itself ended its one trial on a NaN loss."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultWarning)  # an errored trial is not a corrupt one
        data = load_study(errored_study)
    (trial,) = trial_dirs(errored_study)
    status = json.loads((trial / "status.json").read_text())  # written by the study
    assert status["status"] == "errored" and status["step"] == 2
    assert not (trial / "metrics.json").exists()  # it never reached its end

    assert len(data.trials) == 1
    row = data.trials.iloc[0]
    assert (row["study"], row["group"], row["trial"]) == ("errored", "search", trial.name)
    assert row["method"] == "lora" and row["rank"] == 1 and row["lr"] == 0.01
    assert row["status"] == "errored" and row["status_step"] == 2
    assert row["status_reason"] == status["reason"]
    assert "non-finite training loss" in row["status_reason"] and "nan" in row["status_reason"]
    for name in ("eval_loss", "test_loss", "peak_mem_mb", "train_s"):
        assert pd.isna(row[name]), name
    assert len(data.curves[data.curves["trial"] == trial.name]) == row["evals"]


def test_corrupt_copy_warns_for_each_problem_and_returns_the_other_trials(multi_study, tmp_path):
    study = copy_study(multi_study, tmp_path / "multi")
    search = sorted(d for d in (study / "search").iterdir() if d.is_dir())
    finished = [
        d for d in search if json.loads((d / "status.json").read_text())["status"] == "finished"
    ]
    # the deleted one is not finished: the pareto command below keeps a front to print
    truncated, deleted = finished[0], next(d for d in search if d not in finished)
    full = next(
        d
        for d in (study / "baselines").iterdir()
        if d.is_dir()
        if json.loads((d / "config.json").read_text())["method"] == "full"
    )
    text = (truncated / "metrics.json").read_text()
    (truncated / "metrics.json").write_text(text[: len(text) // 2])
    deleted_lr = json.loads((deleted / "config.json").read_text())["train"]["lr"]
    shutil.rmtree(deleted)
    (full / "config.json").write_bytes(b"\x00\xffgarbage{[")

    with pytest.warns(ResultWarning) as record:
        data = load_study(study)
    messages = [str(w.message) for w in record]
    assert any(str(truncated / "metrics.json") in m and "truncated" in m for m in messages)
    assert any(str(full / "config.json") in m and "trial skipped" in m for m in messages)
    assert any(
        m.startswith(str(deleted)) and f"train.lr={deleted_lr}" in m and "not readable" in m
        for m in messages
    )
    assert any("full baseline has no readable trial directory" in m for m in messages)
    assert data.warnings == messages

    trials = data.trials.set_index("trial")
    assert len(trials) == 6 and deleted.name not in trials.index and full.name not in trials.index
    partly = trials.loc[truncated.name]  # config, status and curve kept; metrics unknown
    assert partly["status"] == "finished" and pd.isna(partly["eval_loss"])
    assert partly["best_eval_loss"] > 0 and partly["rank"] > 0
    others = trials.drop(index=truncated.name)
    assert others["eval_loss"].notna().all()

    # the command line still answers, with the problems as warnings on stderr
    code, out, err = run_cli(["pareto", str(study)])
    assert code == 0 and "Pareto front" in out
    assert sum(line.startswith("python -m analysis: warning: ") for line in err.splitlines()) == 4


def test_a_damaged_optuna_journal_is_named_and_the_trials_still_load(multi_study, tmp_path):
    study = copy_study(multi_study, tmp_path / "multi")
    journal = study / "optuna.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3] + [b"{not json\n"] + lines[3:]))  # a torn write
    with pytest.warns(ResultWarning) as record:
        data = load_study(study)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and str(journal) in messages[0] and "damaged" in messages[0]
    assert "deleted search trials cannot be detected" in messages[0]
    assert len(data.trials) == 8  # every trial directory still loads
    journal.write_bytes(b"".join(lines) + b'{"op_code": 4, "worker')  # a kill mid-append
    with pytest.warns(ResultWarning) as record:
        data = load_study(study)
    (message,) = [str(w.message) for w in record]
    assert message.startswith(f"{journal}: a half-written last entry")
    assert len(data.trials) == 8


def test_an_unknown_status_is_named_and_shown_as_unknown(multi_study, tmp_path):
    study = copy_study(multi_study, tmp_path / "multi")
    trial = sorted((study / "search").glob("*/status.json"))[0]
    trial.write_text('{"status": "exploded"}')
    with pytest.warns(ResultWarning) as record:
        data = load_study(study)
    (message,) = [str(w.message) for w in record]
    assert message == f"{trial}: unknown status 'exploded'; status unknown"
    assert data.trials.set_index("trial").loc[trial.parent.name, "status"] == "unknown"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main() in-process, with stdout and stderr captured."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "text, kind",
    [
        ('{"eval_loss": 0.5, "note": "cut in', "truncated"),  # inside a string
        ('{"eval_loss": 0.5, "step":', "truncated"),
        ('{"eval_loss": 0.5,, "step": 3}', "not valid JSON"),
    ],
)
def test_truncated_json_is_told_from_invalid_json(tmp_path, text, kind):
    from analysis.result_files import _read_json

    (tmp_path / "metrics.json").write_text(text)
    found: list[str] = []
    with pytest.warns(ResultWarning) as caught:
        assert _read_json(tmp_path / "metrics.json", found, "kept") is None
    (message,) = [str(w.message) for w in caught]
    assert f"metrics.json: {kind} (" in message and "at at" not in message


def test_not_a_study_is_one_line_and_exit_2(multi_study, tmp_path):
    trial = trial_dirs(multi_study)[0]
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (tmp_path, "is not a study directory"),
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "file.txt", "is a file"),
        (trial, "is a trial directory, not a study"),
    ]
    for path, message in cases:
        for command in ("report", "pareto", "best"):
            code, out, err = run_cli(
                [
                    command,
                    str(path),
                    *(["--out", str(tmp_path / "r")] if command == "report" else []),
                ]
            )
            assert code == 2 and out == "", (command, path)
            assert len(err.strip().splitlines()) == 1 and message in err, err
            with pytest.raises(NotAStudyError, match=message):
                load_studies([path])
    assert not (tmp_path / "r").exists()
    code, _, err = run_cli(["pareto", str(multi_study), "--x", "memory"])
    assert code == 2 and "unknown metric 'memory'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        ["report", str(multi_study), "--curves-by", "colour", "--out", str(tmp_path / "r")]
    )
    assert code == 2 and "unknown factor 'colour'" in err
    # the real exit status of the module
    res = subprocess.run(
        [sys.executable, "-m", "analysis", "best", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.startswith("python -m analysis best: error: ")


def read_trials_csv(path: Path) -> list[dict]:
    """trials.csv parsed with the csv module only (independent of the pandas code under test)."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(text: str) -> float:
    return float(text) if text not in ("", "nan") else math.nan


@pytest.fixture(scope="module")
def trials_csv(multi_study, tmp_path_factory) -> Path:
    from analysis.selection import with_pareto_column

    path = tmp_path_factory.mktemp("csv") / "trials.csv"
    with_pareto_column(load_study(multi_study).trials).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("objective", ["eval_loss", "exact_match", "test_loss"])
def test_best_under_a_budget_agrees_with_brute_force(multi_study, trials_csv, objective):
    rows = read_trials_csv(trials_csv)
    mems = sorted({number(r["peak_mem_mb"]) for r in rows if r["peak_mem_mb"]})
    budgets = [None, *mems, mems[0] - 1]  # every distinct boundary, none fitting the last
    sign = -1 if objective == "exact_match" else 1
    for budget in budgets:
        fits = [
            r
            for r in rows
            if r["status"] == "finished"
            and not math.isnan(number(r[objective]))
            and (budget is None or number(r["peak_mem_mb"]) <= budget)
        ]
        args = ["best", str(multi_study), "--objective", objective]
        args += [] if budget is None else ["--max-mem-mb", repr(budget)]
        code, out, err = run_cli(args)
        if not fits:
            assert code == 1 and "no finished trial" in err and out == ""
            continue
        assert code == 0, err
        optimum = min(sign * number(r[objective]) for r in fits)
        winners = {r["trial"] for r in fits if sign * number(r[objective]) == optimum}
        headline, command, *why = out.strip().splitlines()
        left = len(rows) - len(fits)  # every other trial is counted, with its reason
        if left:
            assert len(why) == 1 and why[0].startswith(f"{left} of {len(rows)} trials left out: ")
        else:
            assert why == []
        chosen = headline.split("[")[1].split("]")[0].split("/")[-1]
        assert chosen in winners, (budget, headline)
        # the printed command re-creates the trial's exact config
        from study.train_one import build_config, parse_args

        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "study.train_one"]
        config_path = Path(argv[argv.index("--config") + 1])
        assert config_path.parent.name == chosen
        assert build_config(parse_args(argv[3:])).to_dict() == json.loads(config_path.read_text())


def test_pareto_command_prints_the_flagged_front(multi_study, trials_csv):
    rows = read_trials_csv(trials_csv)
    flagged = {r["trial"] for r in rows if r["pareto_eval_loss_peak_mem_mb"] == "True"}
    # brute force over the csv: finished rows not dominated on (eval_loss, peak_mem_mb)
    pool = [
        (r["trial"], number(r["eval_loss"]), number(r["peak_mem_mb"]))
        for r in rows
        if r["status"] == "finished" and r["eval_loss"] and r["peak_mem_mb"]
    ]
    front = {
        t
        for t, loss, mem in pool
        if not any(l2 <= loss and m2 <= mem and (l2, m2) != (loss, mem) for _, l2, m2 in pool)
    }
    assert flagged == front and front
    code, out, _ = run_cli(["pareto", str(multi_study), "--x", "peak_mem_mb", "--y", "eval_loss"])
    assert code == 0
    *table, why = out.splitlines()
    printed = {line.split()[2] for line in table[2:]}
    assert printed == front
    assert why.startswith(f"{len(rows) - len(pool)} of {len(rows)} trials left out: "), why
    stopped = [r["trial"] for r in rows if r["status"] == "stopped"]
    assert not set(stopped) & printed  # stopped trials had less budget: not on the default front


class Trap:
    """Unpickling this touches a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_analysis_imports_neither_torch_nor_ray_and_never_unpickles(multi_study, tmp_path):
    import pickle

    study = copy_study(multi_study, tmp_path / "multi")
    marker = tmp_path / "unpickled"
    pickles = [*multi_study.rglob("*.pkl")]
    assert pickles  # Ray's pickles are there to be ignored
    for original in pickles:
        trap = study / original.relative_to(multi_study)
        trap.parent.mkdir(parents=True, exist_ok=True)
        trap.write_bytes(pickle.dumps(Trap(marker)))
    code = (
        "import sys\n"
        "import analysis\n"
        "from analysis.report import build_report\n"
        "from analysis.__main__ import main\n"
        f"build_report([{str(study)!r}], {str(tmp_path / 'r')!r})\n"
        f"assert main(['pareto', {str(study)!r}]) == 0\n"
        f"assert main(['best', {str(study)!r}, '--max-mem-mb', '1e9']) == 0\n"
        "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY []" in res.stdout.splitlines()
    assert (tmp_path / "r" / "report.html").is_file()
    assert not marker.exists()
    # the trap works: unpickling one of those files would have created the marker
    pickle.loads(next(study.rglob("*.pkl")).read_bytes())
    assert marker.exists()
