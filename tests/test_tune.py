"""python -m study.tune end to end on tiny models (one trial at a time, fixed seeds).

Each study starts a local Ray instance; the studies are fixtures shared by the tests (the
`multi_study` one lives in conftest.py: test_analysis.py reads the same study).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.tune import main
from tests.conftest import TRIAL_FILES, space_file

ROOT = Path(__file__).resolve().parents[1]
DESIGN_FILES = (TRIAL_FILES - {"checkpoint"}) | {"status.json"}


def trial_dirs(study: Path, group: str = "search") -> list[Path]:
    return sorted(p.parent for p in (study / group).glob("*/config.json"))


def optuna_study(study: Path):
    """The study's Optuna record, read the way a user would: Optuna's own API on the journal."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study / "optuna.journal")))
    return optuna.load_study(study_name=study.name, storage=storage)


def launched(study: Path) -> list:
    """The Optuna trials that trained (each names its trial directory); a trial a kill left
    RUNNING is marked FAIL and listed as interrupted, and its relaunch is the one counted."""
    ot = optuna_study(study)
    cut = set(ot.user_attrs.get("interrupted", []))
    return [t for t in ot.trials if "trial_dir" in t.user_attrs and t.number not in cut]


def statuses(study: Path, group: str = "search") -> dict[str, dict]:
    return {d.name: json.loads((d / "status.json").read_text()) for d in trial_dirs(study, group)}


def test_study_runs_searched_trials_baselines_and_asha_stops(multi_study, capsys):
    found = statuses(multi_study)
    assert len(found) == 6
    kinds = [s["status"] for s in found.values()]
    assert kinds.count("stopped") >= 1 and kinds.count("finished") >= 1
    bad = [
        d
        for d in trial_dirs(multi_study)
        if json.loads((d / "config.json").read_text())["train"]["lr"] == 1e-7
    ]
    assert len(bad) == 1 and found[bad[0].name]["status"] == "stopped"
    for d in trial_dirs(multi_study):
        assert {p.name for p in d.iterdir()} >= DESIGN_FILES, d
    base = statuses(multi_study, "baselines")
    assert len(base) == 2 and {s["status"] for s in base.values()} == {"finished"}
    methods = {
        json.loads((d / "config.json").read_text())["method"]
        for d in trial_dirs(multi_study, "baselines")
    }
    assert methods == {"base", "full"}
    record = json.loads((multi_study / "study.json").read_text())
    assert record["schema_version"] == 1 and record["command"][:3] == ["python", "-m", "study.tune"]
    assert "lora" in record["space"]


def test_summary_lists_the_pareto_set(multi_study):
    from analysis.summary import collect

    assert len(collect(multi_study)) == 8
    summary = (multi_study / "stdout.txt").read_text().split("Study multi:")[-1]
    assert "6 searched trials" in summary and "stopped by ASHA" in summary
    assert "best eval_loss" in summary and "best peak_mem_mb" in summary
    pareto = summary.split("Pareto set")[1].split("memory estimate")[0]
    listed = [line for line in pareto.splitlines() if "[search/" in line or "[baselines/" in line]
    assert listed and all("peak" in line for line in listed)
    assert f"python -m analysis report {multi_study}" in summary
    out = (multi_study / "stdout.txt").read_text()
    header = [line.split() for line in out.splitlines() if "eval_loss" in line and "tok/s" in line]
    assert header, "the live table was not printed"  # our columns, not Ray's default output
    assert {"rank", "alpha", "targets", "quant", "size", "ex/acc", "status"} <= set(header[0])


def test_multi_objective_optuna_states(multi_study):
    ot = optuna_study(multi_study)
    assert [d.name for d in ot.directions] == ["MINIMIZE", "MINIMIZE"]  # eval_loss, peak_mem_mb
    by_status = statuses(multi_study)
    trials = launched(multi_study)
    assert sorted(t.user_attrs["trial_dir"] for t in trials) == sorted(by_status)
    for trial in trials:
        status = by_status[trial.user_attrs["trial_dir"]]["status"]
        expected = {"stopped": "PRUNED", "finished": "COMPLETE", "errored": "FAIL"}[status]
        assert trial.state.name == expected, trial
        assert (trial.values is None) == (expected != "COMPLETE")
        assert trial.values is None or len(trial.values) == 2
    assert "PRUNED" in {t.state.name for t in trials}


# The fault tests read conftest's `killed` study (test_reliability's; one run for both): a NaN
# at step 2 (lr 0.01), a failed CPU allocation at step 2 (lr 0.015), a transient crash at step 4
# (GOOD, lr 0.02) retried from its step-2 checkpoint, and a sampled trial killed and resumed.


def _by_lr(study: Path) -> dict[float, Path]:
    lrs = [json.loads((d / "config.json").read_text())["train"]["lr"] for d in trial_dirs(study)]
    return dict(zip(lrs, trial_dirs(study)))


def test_nan_and_oom_end_one_trial_each_with_their_reason(killed):
    study = killed["study"]
    dirs = _by_lr(study)
    nan = json.loads((dirs[0.01] / "status.json").read_text())
    oom = json.loads((dirs[0.015] / "status.json").read_text())
    assert nan["status"] == "errored" and "non-finite training loss" in nan["reason"]
    assert oom["status"] == "errored" and "out of memory" in oom["reason"]
    assert json.loads((dirs[0.02] / "status.json").read_text())["status"] == "finished"
    states = [t.state.name for t in launched(study)]
    assert states.count("FAIL") == 2 and states.count("COMPLETE") == 2
    summary = killed["last"].stdout.split("Study twice:")[-1]
    errored = [line for line in summary.splitlines() if line.strip().startswith("errored [")]
    assert len(errored) == 2, summary
    assert any("non-finite training loss" in line for line in errored)
    assert any("out of memory" in line for line in errored)


def test_transient_failure_resumes_from_its_checkpoint(killed):
    trial = _by_lr(killed["study"])[0.02]
    assert (trial / ".fault-transient").is_file()  # the crash happened (once)
    assert json.loads((trial / "status.json").read_text())["status"] == "finished"
    metrics = json.loads((trial / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["resumed_from_step"] == 2
    steps = [p["step"] for p in map(json.loads, (trial / "curve.jsonl").read_text().splitlines())]
    assert steps == [2, 4, 6]


def test_optuna_holds_every_searched_trial_with_its_intermediate_values(killed):
    study = killed["study"]
    trials = launched(study)
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    for trial in trials:
        path = study / "search" / trial.user_attrs["trial_dir"] / "curve.jsonl"
        # (the NaN and OOM trials fail at step 2, before their first evaluation: no curve)
        lines = path.read_text().splitlines() if path.is_file() else []
        curve = [json.loads(line) for line in lines]
        # every evaluation the trial reported (retries and resumes included), by step
        assert trial.intermediate_values == {p["step"]: p["eval_loss"] for p in curve}, trial
    assert sum(bool(t.intermediate_values) for t in trials) == 2


def test_two_studies_in_one_storage_path_keep_their_own_optuna_state(multi_study, errored_study):
    multi, errored = optuna_study(multi_study), optuna_study(errored_study)
    assert (multi.study_name, errored.study_name) == ("multi", "errored")
    assert (len(launched(multi_study)), len(launched(errored_study))) == (6, 1)


def test_a_small_space_is_searched_without_repeats_and_the_search_ends(tmp_path, capsys):
    fixed = {"lora.alpha_ratio": 1, "lora.targets": "qv", "quant.bits": 16, "data.size": 32}
    space = space_file(tmp_path, **fixed, **{"train.lr": 0.01, "lora.rank": {"choice": [1, 2]}})
    argv = ["--space", str(space), "--num-samples", "4", "--no-baselines", "--name", "two"]
    assert main([*argv, "--storage-path", str(tmp_path / "res")]) == 0
    study = tmp_path / "res" / "two"
    ranks = sorted(
        json.loads((d / "config.json").read_text())["lora"]["rank"] for d in trial_dirs(study)
    )
    assert ranks == [1, 2]  # each configuration once, though 4 samples were asked for
    assert "the search ended after 2 of --num-samples 4" in capsys.readouterr().out


def test_a_fixed_target_set_under_a_memory_budget_is_judged_on_the_whole_config(tmp_path):
    """The in-search memory gate saw only the sampled values and filled the rest with defaults:
    a space with `lora.targets: qv` fixed died with KeyError 'all-linear' (issue 11, bug 1)."""
    fixed = {"lora.targets": "qv", "quant.bits": 16, "data.size": 32, "lora.alpha_ratio": 1}
    space = space_file(tmp_path, **fixed, **{"train.lr": 0.01, "lora.rank": {"choice": [1, 2]}})
    argv = ["--space", str(space), "--num-samples", "2", "--no-baselines", "--name", "qv"]
    argv += ["--grace", "6"]  # no ASHA stops: both run to the end
    code = main([*argv, "--max-mem-mb", "20000", "--storage-path", str(tmp_path / "res")])
    assert code == 0
    found = statuses(tmp_path / "res" / "qv")
    assert len(found) == 2 and {s["status"] for s in found.values()} == {"finished"}


def test_a_latency_objective_study_runs_to_its_pareto_set(tmp_path, capsys):
    """Latencies exist only in a trial's last report: every report must still carry every
    metric (NaN until measured), or Tune refuses the first report (issue 11, bug 2)."""
    fixed = {"lora.targets": "qv", "quant.bits": 16, "data.size": 32, "lora.alpha_ratio": 1}
    space = space_file(tmp_path, **fixed, **{"train.lr": 0.01, "lora.rank": {"choice": [1, 2]}})
    argv = ["--space", str(space), "--num-samples", "2", "--no-baselines", "--name", "lat"]
    argv += ["--objective", "eval_loss,latency_ms_per_token_merged", "--grace", "6"]
    assert main([*argv, "--storage-path", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "best latency_ms_per_token_merged" in out and "Pareto set" in out
    trials = launched(tmp_path / "res" / "lat")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(len(t.values) == 2 for t in trials)


def test_an_exhausted_budget_ends_the_search_and_no_configuration_runs_twice_at_once(
    tmp_path, capsys
):
    """Under --max-mem-mb only batch 2 and 4 fit: the search raised RuntimeError after 200 tries
    once they had run (issue 11, bug 3); with --max-concurrent 2 the same configuration, queued
    twice, ran twice at once (bug 4). Now each runs once, the repeat waits for its outcome, the
    over-budget one is told PRUNED with its excess, and the search ends saying why."""
    from search_spaces import sample_point
    from study.config import TrialConfig
    from study.cost.estimate import gate_cfg  # what the gate judges: the estimate and its band
    from study.search.plan import plan_study
    from study.tune import parse_args

    fixed = {"lora.targets": "qv", "quant.bits": 16, "data.size": 32, "lora.alpha_ratio": 1}
    fixed |= {"train.lr": 0.01, "lora.rank": 1, "train.batch_size": {"choice": [2, 4, 256]}}
    points = [{"train.batch_size": b} for b in (2, 2, 256)]
    space = space_file(tmp_path, points=points, **fixed)
    argv = ["--space", str(space), "--num-samples", "4", "--no-baselines", "--name", "budget"]
    argv += ["--storage-path", str(tmp_path / "res"), "--max-concurrent", "2", "--grace", "6"]
    plan = plan_study(parse_args(argv), argv)
    fits, over = (
        gate_cfg(TrialConfig.from_dict({**sample_point(plan.space), "train.batch_size": b}),
                     plan.facts["tiny-llama"], plan.worker_mb)
        for b in (4, 256)
    )
    limit = f"{(fits + over) / 2:.0f}"
    assert main([*argv, "--max-mem-mb", limit]) == 0
    out = capsys.readouterr().out
    study = tmp_path / "res" / "budget"
    batches = sorted(json.loads((d / "config.json").read_text())["train"]["batch_size"]
                     for d in trial_dirs(study))
    assert batches == [2, 4]
    assert (
        f"the search ended after 2 of --num-samples 4: every configuration of the space under "
        f"--max-mem-mb {limit} has run" in out
    )
    assert "not launched (over the memory budget)" in out
    trials = optuna_study(study).trials
    ran = {t.number: t for t in trials if "trial_dir" in t.user_attrs}
    not_launched = [t for t in trials if "not_launched" in t.user_attrs]
    assert not_launched and all(t.params["train.batch_size"] == 256 for t in not_launched)
    assert all(t.state.name == "PRUNED" and t.constraints["memory_mb"] > 0 for t in not_launched)
    waited = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert waited  # the second batch-2 point came while the first ran
    for t in waited:
        original = ran[t.user_attrs["duplicate_of"]]
        assert (t.state, t.value, t.params) == (original.state, original.value, original.params)
    assert "RUNNING" not in {t.state.name for t in trials}


@pytest.mark.slow
def test_two_node_cluster_trial_survives_losing_its_worker(tmp_path):
    """A trial pinned to a worker node by a custom resource; the worker is removed after the
    trial's first checkpoint is persisted and a replacement joins; the trial resumes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1, resources={"pinned": 1})
    cluster.wait_for_nodes()
    space = space_file(tmp_path, **{"train.steps": 300, "eval.every": 10})
    study = tmp_path / "res" / "cluster"
    cmd = [
        sys.executable,
        "-m",
        "study.tune",
        "--space",
        str(space),
        "--num-samples",
        "1",
        "--storage-path",
        str(tmp_path / "res"),
        "--name",
        "cluster",
        "--no-baselines",
        "--address",
        cluster.address,
        "--resource",
        "pinned=1",
        "--cpus-per-trial",
        "1",
        "--grace",
        "300",
        "--max-failures",
        "3",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not list(study.glob("search/*/checkpoint/state.json")):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        assert list(study.glob("search/*/checkpoint/state.json")), "no checkpoint was written"
        cluster.remove_node(worker)
        cluster.add_node(num_cpus=1, resources={"pinned": 1})
        assert proc.wait(timeout=400) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.shutdown()
    (trial,) = trial_dirs(study)
    assert json.loads((trial / "status.json").read_text())["status"] == "finished"
    assert json.loads((trial / "metrics.json").read_text())["resumed_from_step"] > 0


def test_no_generation_before_the_last_evaluation_unless_an_objective_needs_it(tmp_path):
    """Generation was most of the evaluation time; eval_loss (ASHA's metric by default) does not
    need it, exact_match at ASHA's rungs does; a value the user set is kept."""
    from study.search.plan import plan_study
    from study.tune import parse_args

    def early(*extra):
        argv = ["--space", "smoke", "--storage-path", str(tmp_path / "r"), *extra]
        return plan_study(parse_args(argv), argv).space.get("eval", {}).get("early_prompts")

    assert early() == 0
    assert early("--objective", "exact_match,peak_mem_mb") is None  # the field's default
    assert early("--objective", "eval_loss,exact_match") is None  # a stopped trial tells Optuna
    assert early("--set", "eval.early_prompts=7") == 7


def test_the_plan_estimates_the_study_time(tmp_path):
    """Every trial run to its end: more samples, longer; the per-trial range brackets the mean."""
    from study.search.plan import plan_study
    from study.tune import parse_args

    def plan(*extra):
        argv = ["--space", "smoke", "--storage-path", str(tmp_path / "r"), *extra]
        return plan_study(parse_args(argv), argv).time

    few, many = plan("--num-samples", "2"), plan("--num-samples", "6")
    assert 0 < few.shortest_s <= few.mean_trial_s <= few.longest_s
    assert many.total_s - few.total_s == pytest.approx(4 * few.mean_trial_s)
    assert few.worst_s >= few.total_s and few.baselines_s > 0
    assert "estimated wall time" in few.describe()
    longer = plan("--num-samples", "2", "--max-t", "60")
    assert longer.mean_trial_s > few.mean_trial_s
