"""python -m study.tune's command line without training: bad input is one line and exit 2 with
nothing on disk, flags are read as people type them, --resume takes the recorded study."""

from __future__ import annotations

import pytest

from study.tune import main

BAD_INPUTS = [
    (["--set", "lora.rank=0"], "lora.rank must be a positive integer"),
    (["--set", "lora.alpha=-1"], "lora.alpha must be a number > 0"),
    (["--set", "quant.bits=3"], "quant.bits must be one of 4, 8, 16"),
    (["--set", "lora.targets=c_attn"], "target 'c_attn' matches no module"),
    (["--set", "model.name=no-such-model"], "unknown model 'no-such-model'"),
    (["--set", "data.task=lm", "--set", "data.source=missing.txt"], "not a built-in name"),
    (["--set", "data.size=999999"], "exceeds the"),
    (["--num-samples", "-1"], "--num-samples must be a number >= 1"),
    (["--max-mem-mb", "nan"], "--max-mem-mb must be a number >= 1, got nan"),
    (["--set", "train.weight_decay=.inf"], "train.weight_decay must be a number >= 0, got inf"),
    (["--objective", "precision"], "unknown objective 'precision'"),
    (["--objective", "peak_mem_mb"], "must be a quality metric"),
    (["--resume"], "--resume needs --name"),
    (["--objective", "exact_match", "--set", "data.task=lm"], "needs data.task=skills"),
    (["--max-mem-mb", "1"], "every configuration of the space is estimated above it"),
    (["--dashboard", "--address", "127.0.0.1:6379"], "a cluster joined with --address"),
    (["--set", "train.steps={randint: [4, 8]}", "--max-t", "4"], "--max-t sets train.steps"),
    (["--set", "lora.rank=[1, 2"], "--set lora.rank=[1, 2: the value does not parse"),
    (["--set", "data.task=classify", "--set", "data.source=missing.csv"], "not a built-in name"),
    (["--set", "data.task=classify", "--set", "data.label_column=topic"],
     "has no column 'topic' (data.label_column='topic'); its columns: text, label"),
    (["--objective", "accuracy"], "--objective accuracy needs data.task=classify"),
    (["--set", "data.task=classify", "--set", "train.batching=pack"],
     "train.batching=pack is not supported for data.task=classify"),
    (["--set", "quant.scheme=int4"], "quant.scheme must be one of 16, 8, nf4, fp4"),
    # where PEFT has no path: refused before the study, not as an error in every trial
    (["--set", "lora.init=pissa", "--set", "quant.bits=4"],
     "lora.init pissa on a 4bit base is not supported"),
    (["--set", "lora.init=olora", "--set", "model.name=tiny-gpt2"],
     "lora.init olora on GPT-2's Conv1D layers is not supported"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_no_result_dir(args, message, tmp_path, capsys):
    storage = tmp_path / "res"
    code = main(["--space", "smoke", "--storage-path", str(storage), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert not storage.exists()


def test_numbers_are_read_as_people_type_them(tmp_path):
    """`--set train.lr=3e-4` was refused: YAML 1.1 reads 3e-4 as a string (issue 12, bug 7)."""
    from study.search.plan import plan_study
    from study.tune import parse_args

    space = tmp_path / "s.yaml"
    space.write_text("model: {name: tiny-llama}\ntrain: {lr: {loguniform: [1e-5, 1e-2]}}\n")
    argv = ["--space", str(space), "--storage-path", str(tmp_path / "r")]
    argv += ["--set", "train.weight_decay=1e-2"]
    plan = plan_study(parse_args(argv), argv)
    assert plan.space["train"]["lr"] == {"loguniform": [1e-5, 1e-2]}
    assert plan.space["train"]["weight_decay"] == 0.01
    argv = ["--space", "smoke", "--storage-path", str(tmp_path / "r"), "--set", "train.lr=3e-4"]
    assert plan_study(parse_args(argv), argv).space["train"]["lr"] == 3e-4


def test_max_t_is_the_most_steps_a_trial_runs(tmp_path):
    from study.search.plan import plan_study
    from study.tune import parse_args

    argv = ["--space", "smoke", "--storage-path", str(tmp_path / "r"), "--max-t", "4"]
    plan = plan_study(parse_args(argv), argv)
    assert plan.space["train"]["steps"] == 4  # ASHA's max_t and the trials' length agree
    assert all(b["train"]["steps"] == 4 for b in plan.baselines)


def test_no_full_baseline_runs_the_base_only(tmp_path):
    from study.search.plan import plan_study
    from study.tune import parse_args

    argv = ["--space", "smoke", "--storage-path", str(tmp_path / "r")]
    assert [b["method"] for b in plan_study(parse_args(argv), argv).baselines] == ["base", "full"]
    argv.append("--no-full-baseline")
    assert [b["method"] for b in plan_study(parse_args(argv), argv).baselines] == ["base"]


def test_memory_budget_skips_the_full_baseline_over_it(tmp_path, capsys, monkeypatch):
    from study.cost import estimate as E
    from study.cost.estimate import gate_cfg  # what the gate judges: the estimate and its band

    # one band for all: on the tiny model full fine-tuning's extra state (12 bytes a weight of
    # a few million) is smaller than LoRA's band, which this test is not about
    monkeypatch.setattr(E, "BAND", dict.fromkeys(E.BAND, 0.1))
    from study.search.plan import plan_study
    from study.tune import parse_args

    argv = ["--space", "smoke", "--storage-path", str(tmp_path / "r")]
    plan = plan_study(parse_args(argv), argv)
    full = next(b for b in plan.baselines if b["method"] == "full")
    from study.config import TrialConfig

    facts = plan.facts[full["model"]["name"]]
    full_mb = gate_cfg(TrialConfig.from_dict(full), facts, plan.worker_mb)
    lora_mb = min(
        gate_cfg(TrialConfig.from_dict({**full, "method": "lora", "quant.bits": b}),
                 facts, plan.worker_mb)
        for b in (4, 16)
    )
    assert lora_mb < full_mb
    limit = str((lora_mb + full_mb) / 2)
    plan = plan_study(parse_args([*argv, "--max-mem-mb", limit]), argv)
    assert [b["method"] for b in plan.baselines] == ["base"]
    assert "the full baseline of tiny-llama is not run" in capsys.readouterr().out


def test_resume_takes_the_recorded_study_and_refuses_changed_flags(tmp_path, capsys):
    from study import record
    from study.search.plan import plan_study, study_record
    from study.tune import parse_args

    storage = tmp_path / "r"
    started = ["--space", "smoke", "--storage-path", str(storage), "--name", "s"]
    started += ["--set", "train.steps=4", "--objective", "eval_loss,peak_mem_mb"]
    first = plan_study(parse_args(started), started)
    record.write_study(first.study_dir, study_record(first))
    again = ["--storage-path", str(storage), "--name", "s", "--resume"]
    plan = plan_study(parse_args(again), again)  # no --space: the default space is NOT used
    assert plan.space == first.space and plan.space["train"]["steps"] == 4
    assert plan.objectives == ["eval_loss", "peak_mem_mb"]
    assert plan.facts.keys() == first.facts.keys() == {"tiny-llama"}
    assert plan.facts["tiny-llama"].total_params == first.facts["tiny-llama"].total_params
    assert main([*again, "--space", "default"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "as it was started, with --space 'smoke'" in err[0], err
    assert main([*again, "--num-samples", "3"]) == 2


def test_resume_refuses_a_damaged_journal_in_one_line_and_takes_a_cut_last_entry(
    tmp_path, capsys
):
    from study import journal, record
    from study.search.plan import plan_study, study_record
    from study.search.searcher import StudySearch
    from study.tune import parse_args

    storage = tmp_path / "r"
    started = ["--space", "smoke", "--storage-path", str(storage), "--name", "s"]
    first = plan_study(parse_args(started), started)
    record.write_study(first.study_dir, study_record(first))
    searcher = StudySearch(
        ["eval_loss"], ["min"], space=first.space, storage=journal.storage(first.study_dir),
        study_name="s",
    )
    searcher.suggest("t0")
    path = first.study_dir / "optuna.journal"
    good = path.read_bytes()
    again = ["--storage-path", str(storage), "--name", "s", "--resume"]
    path.write_bytes(good + b'{"op_code": 4, "stud')  # a kill mid-append: resumable
    assert plan_study(parse_args(again), again).name == "s"
    lines = good.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [b"\x00garbage\n"] + lines[2:]))  # damaged inside
    assert main(again) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and str(path) in err[0], err


def test_unparsable_space_and_unwritable_storage(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: {rank: [unclosed\n")
    assert main(["--space", str(bad), "--storage-path", str(tmp_path / "r")]) == 2
    assert "does not parse" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--space", "smoke", "--storage-path", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_memory_guard_stops_a_trial_over_budget():
    from study.search.runner import MemoryBudgetExceeded, _memory_guard

    _memory_guard(10**9)(1, 0.0)  # far above: nothing happens
    with pytest.raises(MemoryBudgetExceeded, match="exceeds --max-mem-mb 1 at step 3"):
        _memory_guard(1)(3, 0.0)
