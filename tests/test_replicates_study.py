"""python -m study.tune --space smoke-grid --search grid --repeats 3 --scheduler none, end to end
(Ray, the fork server, the trials), and its bad input; the kill -9 and --resume run is slow."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.tune import main
from tests.test_tune import launched, optuna_study

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--space", "smoke-grid", "--search", "grid", "--repeats", "3", "--scheduler", "none"]


def trials(study: Path, group: str = "search") -> list[dict]:
    """Each trial directory's config, status, final metrics and eval-loss curve."""
    out = []
    for d in sorted((study / group).glob("*/config.json")):
        d = d.parent
        curve = [json.loads(line) for line in (d / "curve.jsonl").read_text().splitlines()]
        out.append({
            "dir": d.name,
            "config": json.loads((d / "config.json").read_text()),
            "status": json.loads((d / "status.json").read_text()),
            "metrics": json.loads((d / "metrics.json").read_text()),
            "curve": [p.get("eval_loss") for p in curve if "eval_loss" in p],
        })
    return out


def check_replicated(study: Path, configs: int = 4, k: int = 3) -> None:
    """Every configuration has k finished replicates (seeds 0..k-1, replicates 0..k-1, one
    config_id, different loss curves), and Optuna one COMPLETE trial per configuration whose
    value is their mean eval_loss; every grid point ran once per replicate."""
    rows = trials(study)
    by_config: dict[str, list[dict]] = {}
    for row in rows:
        assert row["status"]["status"] == "finished"
        by_config.setdefault(row["status"]["config_id"], []).append(row)
    assert len(rows) == configs * k and len(by_config) == configs
    for members in by_config.values():
        assert sorted(m["config"]["seed"] for m in members) == list(range(k))
        assert sorted(m["status"]["replicate"] for m in members) == list(range(k))
        assert len({json.dumps(m["curve"]) for m in members}) == k  # seeds change the run
        assert len({json.dumps({**m["config"], "seed": 0}) for m in members}) == 1
    told = launched(study)
    assert [t.state.name for t in told] == ["COMPLETE"] * configs
    for trial in told:
        dirs = [r["dir"] for r in trial.user_attrs["replicates"]]
        members = [r for r in rows if r["dir"] in dirs]
        assert len(members) == k
        mean = statistics.fmean(m["metrics"]["eval_loss"] for m in members)
        assert trial.value == pytest.approx(mean, rel=1e-12)
    points = {(t.params["lora.rank"], t.params["lora.targets"]) for t in told}
    assert points == {(r, t) for r in (2, 8) for t in ("qv", "all-linear")}


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory) -> tuple[Path, str]:
    """The replicated smoke-grid study (no baselines) and what it printed."""
    root = tmp_path_factory.mktemp("grid")
    argv = [*GRID, "--no-baselines", "--max-concurrent", "2", "--name", "grid"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main([*argv, "--storage-path", str(root)]) == 0
    return root / "grid", printed.getvalue()


def test_a_replicated_grid_study_runs_each_point_k_times_and_tells_optuna_the_mean(grid_study):
    study, out = grid_study
    check_replicated(study)
    assert "per configuration (eval_loss over its finished replicates, mean +- sd):" in out
    assert out.count(" 3 of 3 finished, ") == 4
    assert "config  n  eval_loss" in out  # the live table's per-configuration spread
    assert len(optuna_study(study).trials) == 4  # the grid's size is --num-samples' default
    from analysis.load import load_study

    table = load_study(study).trials  # the analysis tables carry the identity too
    assert sorted(table.groupby("config_id")["replicate"].apply(sorted).tolist()) == [
        [0, 1, 2]] * 4


def test_its_report_leads_with_the_answer_and_pairs_every_factor(grid_study, tmp_path):
    """Issue 17: the answer and the recommendations first (in headless Chromium), and
    stats/comparisons.csv with both factors compared over 6 pairs."""
    import pandas as pd

    from analysis.__main__ import main as analysis_main
    from analysis.stats import COLUMNS
    from tests.cdp import open_page
    from tests.test_report import _chromium

    out = tmp_path / "report"
    assert analysis_main(["report", str(grid_study[0]), "--out", str(out),
                          "--interactions", "rank:targets"]) == 0
    comps = pd.read_csv(out / "stats" / "comparisons.csv")
    assert list(comps.columns) == COLUMNS
    loss = comps[comps["metric"] == "eval_loss"].set_index("factor")
    assert loss.loc["rank", "n_pairs"] == 6 and loss.loc["targets", "n_pairs"] == 6
    assert loss["level_a"].tolist() == ["2", "qv"]
    assert loss["level_b"].tolist() == ["8", "all-linear"]
    anova = pd.read_csv(out / "stats" / "anova.csv")
    assert "rank:targets" in anova[anova["metric"] == "eval_loss"]["term"].tolist()
    shown = open_page(
        _chromium(), (out / "report.html").resolve().as_uri(), tmp_path,
        expression="[Array.from(document.querySelectorAll('h2')).map(h => h.textContent), "
                   "Array.from(document.querySelectorAll('ul.answer li')).map(l => l.textContent)]",
    ).value
    assert shown[0][:4] == ["The answer", "Recommendations", "Parameter importance",
                            "Factor effects"]
    assert shown[1][0].startswith("Best eval_loss: lora r")
    assert any(s.startswith("targets all-linear has ") and "over 6 pairs" in s for s in shown[1])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--space", "smoke", "--search", "grid"],
         "--search grid needs a space of choices, but train.lr is continuous"),
        (["--space", "smoke-grid", "--repeats", "0"], "--repeats must be a number >= 1"),
        (["--space", "smoke-grid", "--search", "bayes"], "argument --search: invalid choice"),
        (["--space", "smoke-grid", "--scheduler", "hyperband"],
         "argument --scheduler: invalid choice"),
    ],
)
def test_bad_search_flags_are_one_line_exit_2_and_nothing_on_disk(args, message, tmp_path,
                                                                   capsys):
    try:
        code = main([*args, "--storage-path", str(tmp_path / "res"), "--name", "x"])
    except SystemExit as exit_:  # argparse's refusals (study.cli: one line, code 2)
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


def test_resume_refuses_another_repeats_or_search(tmp_path, capsys):
    study = tmp_path / "s"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({
        "command": ["python", "-m", "study.tune", *GRID, "--name", "s"],
        "space": {}, "objectives": ["eval_loss"]}))
    for flag, value in (("--repeats", "2"), ("--search", "tpe"), ("--scheduler", "asha")):
        argv = ["--name", "s", "--resume", "--storage-path", str(tmp_path), flag, value]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"as it was started, with {flag}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_kill_9_mid_study_and_resume_keep_every_count_exact(tmp_path):
    """Baselines (replicated too) and the replicated grid; the driver is killed -9 once some
    replicates of the search have finished, then resumed to the end."""
    cmd = [sys.executable, "-m", "study.tune", *GRID, "--name", "cut",
           "--storage-path", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    study = tmp_path / "cut"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in (study / "search").glob("*/status.json")
                if '"finished"' in p.read_text()]
        if len(done) >= 4:  # mid-configuration: its second replicate is running or starting
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["--name", "cut", "--resume", "--storage-path", str(tmp_path)]) == 0
    check_replicated(study)
    # the base of a generative task draws nothing at random: it runs once (baseline_repeats)
    assert sorted(p.name for p in (study / "baselines").iterdir() if p.is_dir()) == [
        "base-r0", *(f"full-r{r}" for r in range(3))]
    baselines = trials(study, "baselines")
    assert sorted(b["config"]["seed"] for b in baselines) == [0, 0, 1, 2]
    assert all(b["status"]["status"] == "finished" for b in baselines)
    assert optuna_study(study).user_attrs.get("interrupted")  # the kill cut a configuration


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["random", "gp"])
def test_random_and_gp_search_run_end_to_end(mode, tmp_path):
    """Through Ray and the fork server, with ASHA; --num-samples 6 on a 4-point space, so the
    sampler proposes points already run (told, not trained again) until the space is done."""
    argv = ["--space", "smoke-grid", "--search", mode, "--num-samples", "6", "--no-baselines",
            "--max-concurrent", "2", "--name", mode, "--storage-path", str(tmp_path)]
    assert main(argv) == 0
    told = launched(tmp_path / mode)
    assert len(told) == 4 and {t.state.name for t in told} <= {"COMPLETE", "PRUNED"}
    assert any(t.state.name == "COMPLETE" for t in told)
    assert "search_ended" in optuna_study(tmp_path / mode).user_attrs  # the space, exhausted
    rows = trials(tmp_path / mode)
    assert len(rows) == 4 and {r["status"]["replicate"] for r in rows} == {0}
