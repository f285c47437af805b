"""run_trial on tiny models: learning, methods, determinism, resume, errors, memory metric."""

from __future__ import annotations

import json

import pytest
import torch

import study.trial.train
from study.trial.run import run_trial
from study.trial.train import NonFiniteLossError
from tests.conftest import TRIAL_FILES, Interrupt, assert_resume_matches_whole, tiny_trial


def curve(path):
    return [json.loads(line) for line in (path / "curve.jsonl").read_text().splitlines()]


def test_lora_trial_learns_and_writes_its_files(tmp_path):
    base = run_trial(tiny_trial(method="base"), out_dir=tmp_path / "base")
    reports, reports_metrics = [], []
    final = run_trial(
        tiny_trial(**{"train.steps": 30, "train.lr": 1e-2, "eval.every": 10}),
        report=lambda m, ck: (reports.append((m["step"], ck)), reports_metrics.append(m)),
        out_dir=tmp_path / "lora",
    )
    assert final["eval_loss"] < base["eval_loss"] - 0.2  # ln(259) = 5.56 at random init
    assert [s for s, _ in reports] == [10, 20, 30]
    assert {p.name for p in (tmp_path / "lora").iterdir()} >= TRIAL_FILES
    assert [p["step"] for p in curve(tmp_path / "lora")] == [10, 20, 30]
    for key in (
        "test_loss",
        "latency_ms_per_token_unmerged",
        "latency_ms_per_token_merged",
        "peak_mem_mb",
        "train_tokens_per_s",
        "fwd_ms",
        "bwd_ms",
    ):
        assert final[key] is not None and 0 < final[key] < float("inf"), key
    assert 0 <= final["test_exact_match"] <= 1
    assert final["peak_mem_mb"] >= final["start_mem_mb"] > 0
    # only the last report says the trial ran to its end (the study marks it finished from that)
    assert [m.get("final") for m in reports_metrics] == [None, None, True]
    saved = json.loads((tmp_path / "lora" / "metrics.json").read_text())
    assert saved["step"] == 30 and saved["eval_loss"] == final["eval_loss"]
    env = json.loads((tmp_path / "lora" / "env.json").read_text())
    assert env["compute_dtype"] == "fp32" and env["threads"] == torch.get_num_threads()


def test_base_trains_nothing_and_full_trains_everything(tmp_path):
    base = run_trial(tiny_trial(method="base"), out_dir=tmp_path / "base")
    assert base["trainable_params"] == 0 and base["step"] == 0
    assert not (tmp_path / "base" / "checkpoint").exists()
    assert "test_loss" in base
    full = run_trial(tiny_trial(method="full"), out_dir=tmp_path / "full")
    from study.trial.models import load_model

    model, _ = load_model("tiny-llama")
    assert full["trainable_params"] == sum(p.numel() for p in model.parameters())


def test_trainable_params_counts_requires_grad(tmp_path, monkeypatch):
    seen = {}
    original = study.trial.run.count_parameters

    def spy(model):
        seen["n"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return original(model)

    monkeypatch.setattr(study.trial.run, "count_parameters", spy)
    final = run_trial(tiny_trial(**{"lora.targets": "qv", "lora.rank": 2}), out_dir=tmp_path)
    assert final["trainable_params"] == seen["n"] == 2 * 2 * ((64 + 64) + (64 + 32))


def test_same_config_twice_gives_bitwise_equal_losses(tmp_path):
    cfg = tiny_trial(**{"lora.dropout": 0.1})
    losses = {"a": [], "b": []}
    a = run_trial(cfg, out_dir=tmp_path / "a", callbacks=(lambda s, x: losses["a"].append(x),))
    b = run_trial(cfg, out_dir=tmp_path / "b", callbacks=(lambda s, x: losses["b"].append(x),))
    assert len(losses["a"]) == cfg.train.steps and losses["a"] == losses["b"]  # every step's loss
    assert curve(tmp_path / "a") == curve(tmp_path / "b")
    assert a["eval_loss"] == b["eval_loss"] and a["test_loss"] == b["test_loss"]



@pytest.mark.parametrize("variant", [
    {},
    # DoRA's magnitude and LoRA+'s per-group lr go through the checkpoint; PiSSA's init is
    # derived again from the base and the seed, and its residual base must be too
    {"lora.variant": "dora", "lora.loraplus_ratio": 16},
    {"lora.init": "pissa"},
])
def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path, variant):
    cfg = tiny_trial(**{"train.steps": 8, "eval.every": 4, "lora.dropout": 0.1, **variant})
    assert_resume_matches_whole(cfg, tmp_path)


def test_nan_loss_ends_the_trial_naming_the_step(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = study.trial.train.causal_lm_loss

    def poisoned(model, batch, reduction="mean"):
        loss, n = original(model, batch, reduction)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), n

    monkeypatch.setattr(study.trial.train, "causal_lm_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        run_trial(tiny_trial(), out_dir=tmp_path)


def _peak_with_500mb(tmp_path, device: str) -> tuple[dict, dict]:
    cfg = tiny_trial(**{"train.steps": 4, "eval.every": 4})
    quiet = run_trial(cfg, out_dir=tmp_path / "quiet")
    held = []

    def allocate(step, _loss):
        if step == 2:
            held.append(torch.ones(500 * 2**20 // 4, device=device))  # 500 MB, touched

    loud = run_trial(cfg, out_dir=tmp_path / "loud", callbacks=(allocate,))
    held.clear()
    return quiet, loud


@pytest.mark.skipif(torch.cuda.is_available(), reason="the trial runs on CUDA here")
def test_peak_memory_sees_a_500mb_tensor(tmp_path):
    quiet, loud = _peak_with_500mb(tmp_path, "cpu")
    assert loud["peak_mem_mb"] - quiet["peak_mem_mb"] == pytest.approx(500, rel=0.1)
    assert loud.get("peak_reserved_mb") is None  # a CUDA allocator figure: absent on CPU


@pytest.mark.gpu
def test_cuda_peak_memory_sees_a_500mb_tensor(tmp_path):
    quiet, loud = _peak_with_500mb(tmp_path, "cuda")
    assert loud["peak_mem_mb"] - quiet["peak_mem_mb"] == pytest.approx(500, rel=0.1)
    assert loud["peak_reserved_mb"] >= loud["peak_mem_mb"]
    assert loud["peak_reserved_mb"] - quiet["peak_reserved_mb"] == pytest.approx(500, rel=0.1)


def test_gradient_checkpointing_gives_the_same_training(tmp_path, monkeypatch):
    import study.trial.run

    calls = {"n": 0}
    prepare = study.trial.run.prepare

    def count_training_layer_calls(model, cfg):
        prepare(model, cfg)
        # A checkpointed layer runs again in backward. A pre-hook: torch's recompute stops as soon
        # as the saved tensors it needs exist again, before the mlp's forward hooks would fire.
        for layer in model.model.layers:
            layer.mlp.register_forward_pre_hook(
                lambda mod, *_: calls.__setitem__("n", calls["n"] + mod.training)
            )

    monkeypatch.setattr(study.trial.run, "prepare", count_training_layer_calls)
    cfg = tiny_trial()
    plain = run_trial(cfg, out_dir=tmp_path / "plain")
    plain_calls, calls["n"] = calls["n"], 0
    ckpt = run_trial(tiny_trial(**{"train.grad_checkpointing": True}), out_dir=tmp_path / "gc")
    layers = 2  # tiny-llama
    assert plain_calls == cfg.train.steps * layers  # one forward per layer and step
    assert calls["n"] == 2 * cfg.train.steps * layers  # and a recompute in each backward
    assert ckpt["eval_loss"] == pytest.approx(plain["eval_loss"], abs=1e-5)


def test_throughput_leaves_out_each_processs_first_step(tmp_path, monkeypatch):
    """train_tokens_per_s counts the steps after the first of each process (the first warms
    up): on a clock where each process's first step takes 100 s more, and every other clock
    read 0.25 s, the throughput of a trial cut after step 2 and resumed leaves both out."""
    clock = {"t": 0.0, "calls": 0}

    def fake_now(device):
        clock["calls"] += 1
        clock["t"] += 100.0 if clock["calls"] == 2 else 0.25  # inside the process's first step
        return clock["t"]

    def stop_at_2(metrics, checkpoint):
        if metrics["step"] == 2:
            raise Interrupt

    monkeypatch.setattr(study.trial.train, "now", fake_now)
    cfg = tiny_trial(**{"train.steps": 4, "eval.every": 2})
    with pytest.raises(Interrupt):
        run_trial(cfg, report=stop_at_2, out_dir=tmp_path / "cut")
    clock["calls"] = 0  # a new process
    final = run_trial(cfg, resume_from=tmp_path / "cut" / "checkpoint", out_dir=tmp_path / "cut")
    assert final["train_s"] > 200  # both warm-ups are in the wall time
    # steps 2 and 4 are timed, 1.25 s each: the throughput is their tokens over 2.5 s (with a
    # warm-up counted it would be under tokens_seen / 100)
    tokens = final["tokens_seen"]
    assert tokens / 4 / 2.5 < final["train_tokens_per_s"] <= tokens / 2.5


def test_step_stats_throughput_without_the_first_step():
    stats = study.trial.train.StepStats(step_ms=[9000, 1000, 1000], tokens=300, seconds=11.0,
                                  warm_tokens=100, warm_seconds=9.0)
    assert stats.summary()["train_tokens_per_s"] == pytest.approx(200 / 2.0)
    one = study.trial.train.StepStats(step_ms=[9000], tokens=100, seconds=9.0, warm_tokens=100,
                                warm_seconds=9.0)
    assert one.summary()["train_tokens_per_s"] == pytest.approx(100 / 9.0)  # the only step
