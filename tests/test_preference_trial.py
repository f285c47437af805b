"""Preference trials and studies: DPO from an adapter, the cached reference across a resume, bad
input from both commands, and a dpo-smoke study killed with -9 and resumed."""

from __future__ import annotations

import json
import time

import pytest
import torch

from lora_impl import inject_lora, load_adapter, save_adapter
from study import metrics as M
from study import record
from study.config import TrialConfig
from study.train_one import main as train_one
from study.trial.data import build_data
from study.trial.models import load_model
from study.trial.reference import score
from study.trial.run import run_trial
from study.tune import main as tune
from tests.conftest import randomize_lora
from tests.test_reliability import kill_all, launch, run, statuses, tune_cmd

TINY = {"model.name": "tiny-llama", "data.task": "preference", "data.size": 16,
        "data.eval_size": 30, "data.test_size": 30, "lora.rank": 2, "lora.targets": "qv",
        "train.steps": 4, "train.batch_size": 4, "train.warmup": 1, "train.dtype": "fp32",
        "train.lr": 1e-2, "eval.every": 2, "eval.max_new_tokens": 2, "eval.latency_tokens": 2,
        "eval.latency_prompts": 1, "eval.early_prompts": 0}
KEYS = (*M.PREFERENCE_EVAL, *M.PREFERENCE_TEST, M.EVAL_LOSS, M.TEST_LOSS, M.EXACT_MATCH,
        M.TEST_EXACT_MATCH)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An adapter as an SFT trial leaves it (rank 2 on q and v, a non-zero B), PEFT's format."""
    model, _ = load_model("tiny-llama")
    inject_lora(model, "qv", rank=2, alpha=4.0)
    randomize_lora(model, seed=5)
    return save_adapter(model, tmp_path_factory.mktemp("sft") / "adapter")


def test_dpo_from_an_adapter_takes_it_as_start_and_reference(adapter, tmp_path):
    cfg = TrialConfig.from_dict({**TINY, "lora.init_from": str(adapter), "lora.alpha": 4.0})
    metrics = run_trial(cfg, out_dir=tmp_path)
    assert all(metrics[k] is not None for k in KEYS) and 0 <= metrics[M.REWARD_ACCURACY] <= 1
    start, tokenizer = load_model("tiny-llama")
    load_adapter(start, adapter)
    data = build_data(cfg.data, tokenizer)
    expected = score(start, data.eval, tokenizer.pad_token_id, None)
    cached = record.read_reference(tmp_path)
    # the adapter's log-probabilities, not the base's
    assert torch.allclose(torch.tensor(cached["eval"]), torch.tensor(expected), atol=1e-4)
    base, _ = load_model("tiny-llama")
    from_base = torch.tensor(score(base, data.eval, tokenizer.pad_token_id, None))
    assert not torch.allclose(from_base, torch.tensor(expected), atol=1e-2)


BAD = [
    (["--dpo.beta", "0"], "dpo.beta must be a number > 0"),
    (["--dpo.beta", "-1"], "dpo.beta must be a number > 0"),
    (["--dpo.beta", "abc"], "invalid float value: 'abc'"),
    (["--lora.init_from", "/no/such/dir"], "lora.init_from=/no/such/dir is not a usable adapter"),
    (["--data.source", "{bad}"], "is not a built-in name or an existing file"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_to_train_one_is_one_line_exit_2_nothing_written(args, message, tmp_path,
                                                                   capsys):
    flags = [f"--{k}={v}" for k, v in TINY.items()]
    args = [a.replace("{bad}", str(tmp_path / "missing.jsonl")) for a in args]
    try:
        code = train_one([*flags, *args, "--out", str(tmp_path / "out")])
    except SystemExit as done:  # argparse's own refusal (a value of the wrong type)
        code = done.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def _files(tmp_path, adapter):
    """Bad preference files and adapters: (flags, message)."""
    rows = {"norejected": [{"prompt": "p", "chosen": "a"}],
            "equal": [{"prompt": "p", "chosen": "a", "rejected": "a"}],
            "emptyprompt": [{"prompt": "", "chosen": "a", "rejected": "b"}],
            "emptyresponse": [{"prompt": "p", "chosen": "a", "rejected": ""}]}
    for name, content in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in content))
    not_adapter = tmp_path / "notadapter"
    not_adapter.mkdir()
    (not_adapter / "adapter_config.json").write_text("{}")
    return [
        ({"data.source": str(tmp_path / "norejected.jsonl")}, "has no column 'rejected'"),
        ({"data.source": str(tmp_path / "equal.jsonl")}, "the chosen response equals"),
        ({"data.source": str(tmp_path / "emptyprompt.jsonl")}, "empty 'prompt'"),
        ({"data.source": str(tmp_path / "emptyresponse.jsonl")}, "empty 'rejected'"),
        ({"lora.init_from": str(not_adapter)}, "peft_type must be LORA"),
        ({"lora.init_from": str(adapter), "lora.alpha": 4.0, "lora.rank": 4},
         "the adapter's r is 2, the trial's lora.rank gives 4"),
        ({"lora.init_from": str(adapter), "lora.alpha": 4.0, "lora.targets": "all-linear"},
         "does not fit the adapters here"),
    ]


def test_bad_files_and_adapters_from_both_commands(adapter, tmp_path, capsys):
    for values, message in _files(tmp_path, adapter):
        out, storage = tmp_path / "out", tmp_path / "res"
        code = train_one([*(f"--{k}={v}" for k, v in {**TINY, **values}.items()),
                          "--out", str(out)])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert code == 2 and len(err) == 1 and message in err[0], (values, err)
        assert not out.exists()
        if message == "does not fit the adapters here":
            continue  # the targets fit only the model: the study's trial says so (not the plan)
        sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
        code = tune(["--space", "dpo-smoke", "--storage-path", str(storage), *sets])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert code == 2 and len(err) == 1 and message in err[0], (values, err)
        assert not storage.exists()


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_trial_reads_its_reference_back_and_ends_as_an_uninterrupted_one(tmp_path):
    cfg = TrialConfig.from_dict(TINY)
    whole = run_trial(cfg, out_dir=tmp_path / "whole")

    def stop_at_2(metrics, checkpoint):
        if metrics["step"] == 2:
            raise _Stop

    part = tmp_path / "part"
    with pytest.raises(_Stop):
        run_trial(cfg, report=stop_at_2, out_dir=part)
    written = (part / record.REFERENCE).stat().st_mtime_ns
    resumed = run_trial(cfg, resume_from=record.checkpoint_dir(part), out_dir=part)
    assert (part / record.REFERENCE).stat().st_mtime_ns == written  # read back, not rewritten
    for key in (*KEYS, M.TRAIN_LOSS):
        assert resumed[key] == whole[key], key
    # a damaged cache is named and computed again from the starting model: the same numbers
    (part / record.REFERENCE).write_text('{"train": [[-1.0, ')
    with pytest.warns(UserWarning, match="computed again"):
        again = run_trial(cfg, resume_from=record.checkpoint_dir(part), out_dir=part)
    assert again[M.DPO_LOSS] == pytest.approx(whole[M.DPO_LOSS], abs=1e-6)


@pytest.mark.slow
def test_a_dpo_smoke_study_survives_kill_9_and_resumes_with_exact_counts(tmp_path):
    storage, name = tmp_path / "res", "dpo"
    args = ("--space", "dpo-smoke", "--objective", "reward_accuracy", "--num-samples", "4",
            "--seed", "0")
    proc = launch(tune_cmd(storage, name, *args), tmp_path / "first.log")
    study = storage / name
    deadline = time.time() + 600
    while time.time() < deadline and not list((study / "search").glob("*/checkpoint")):
        time.sleep(1)
    kill_all(proc)
    proc.wait()
    assert list((study / "search").glob("*/checkpoint")), (tmp_path / "first.log").read_text()
    res = run(tune_cmd(storage, name, "--resume"), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    found = statuses(study)
    assert len(found) == 4 and set(found.values()) <= {record.FINISHED, record.STOPPED}, found
    finals = [json.loads((study / "search" / t / record.METRICS).read_text()) for t in found]
    assert all(m.get(M.REWARD_ACCURACY) is not None for m in finals)
    report = run([*tune_cmd(storage, name)[:1], "-m", "analysis", "report", str(study)])
    assert report.returncode == 0, report.stderr[-2000:]
    html = next(study.glob("**/*.html")).read_text()
    assert "reward_accuracy" in html and "beta" in html
