"""Shared fixtures: tiny models, seeded adapters, offline hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test waits on the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A cache of our own: tests never read or write the user's model/data cache.
os.environ["LORA_STUDY_CACHE"] = os.path.join(
    __import__("tempfile").mkdtemp(prefix="lora-study-test-cache-"), "cache"
)
# train.compile=auto measures nothing in tests (their trials, subprocesses and Ray workers
# inherit it): a cold torch.compile of even a tiny model takes tens of seconds on 2 cores.
# tests/test_compiling.py measures auto's rule with fake timings, and compiles once for real.
os.environ["LORA_STUDY_COMPILE_AUTO"] = "off"

from tests.blocking import block_from_env  # noqa: E402

block_from_env()  # make gpu-check's dry run: prove the gpu tests need no Ray, Optuna, ...

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_MODELS = ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-neox"]
# What run_trial leaves in a trial directory (DESIGN's contract, minus the study's status.json).
TRIAL_FILES = frozenset(
    {
        "config.json",
        "metrics.json",
        "curve.jsonl",
        "adapter",
        "examples.json",
        "env.json",
        "checkpoint",
    }
)


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def randomize_lora(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Give every adapter a non-zero B (and a fresh A) so parity checks are not trivial."""
    from lora_impl import lora_layers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for lin in (layer.lora_A, layer.lora_B):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * std)


@pytest.fixture
def sample_ids() -> torch.Tensor:
    """A fixed batch of token ids (2 x 24) valid for the tiny byte tokenizer."""
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, 256, (2, 24), generator=gen)


def tiny_trial(**overrides):
    """A TrialConfig for a seconds-long trial on tiny-llama (dotted-key overrides)."""
    from study.config import TrialConfig

    values = {
        "model.name": "tiny-llama",
        "data.size": 64,
        "data.eval_size": 30,
        "data.test_size": 30,
        "train.steps": 6,
        "train.batch_size": 4,
        "train.warmup": 2,
        "train.dtype": "fp32",
        "eval.every": 3,
        "eval.max_new_tokens": 4,
        "eval.latency_tokens": 4,
        "eval.latency_prompts": 2,
    }
    values.update(overrides)
    return TrialConfig.from_dict(values)


# --- a small real study, shared by test_tune.py and test_analysis.py (made once per session) ---

GOOD = {"lora.rank": 8, "lora.targets": "all-linear", "train.lr": 0.02, "quant.bits": 16}
BAD = {"lora.rank": 1, "lora.targets": "qv", "train.lr": 1e-7, "quant.bits": 16}


def space_file(tmp, points: list[dict] | None = None, **overrides):
    """The smoke space with searched points tried first and fixed overrides."""
    import yaml

    from search_spaces import load_space

    space = load_space("smoke")
    for key, value in overrides.items():
        section, leaf = key.split(".")
        space[section][leaf] = value
    if points:
        space["points_to_evaluate"] = points
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def copy_study(study, dest):
    """A copy of a study's own files to damage or edit (no checkpoints, no Ray files)."""
    import shutil
    from pathlib import Path

    ignore = shutil.ignore_patterns("checkpoint*", "*.pkl", "events.out*", "tuner*")
    return Path(shutil.copytree(study, dest, ignore=ignore))


@pytest.fixture(scope="session")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def multi_study(storage, tmp_path_factory):
    """6 searched trials + baselines, two objectives; a bad config follows a good one."""
    import contextlib
    import io

    from study.tune import main

    space = space_file(tmp_path_factory.mktemp("space"), points=[GOOD, BAD])
    args = f"--space {space} --num-samples 6 --max-concurrent 1 --storage-path {storage} "
    args += "--name multi --seed 3 --objective eval_loss,peak_mem_mb --grace 2"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args.split())
    assert code == 0
    (storage / "multi" / "stdout.txt").write_text(out.getvalue())
    return storage / "multi"


# A NaN the training loop raises at step 2 (study.search.runner's LORA_STUDY_FAULT hook), for rank
# 1.
NAN_FAULT = "nan@2@lora.rank=1"


@pytest.fixture(scope="session")
def errored_study(storage, tmp_path_factory):
    """One searched trial, made by the real study code, that errors on a NaN training loss
    injected at step 2 (no baselines: 15-20 s, mostly starting Ray)."""
    from study.tune import main

    points = [{"lora.rank": 1, "lora.targets": "qv", "train.lr": 0.01}]
    space = space_file(tmp_path_factory.mktemp("space"), points=points)
    args = f"--space {space} --num-samples 1 --storage-path {storage} "
    args += "--name errored --no-baselines --grace 6"
    previous = os.environ.get("LORA_STUDY_FAULT")
    os.environ["LORA_STUDY_FAULT"] = NAN_FAULT
    try:
        code = main(args.split())
    finally:
        if previous is None:
            os.environ.pop("LORA_STUDY_FAULT")
        else:
            os.environ["LORA_STUDY_FAULT"] = previous
    assert code == 0
    return storage / "errored"


@pytest.fixture(scope="session")
def killed(tmp_path_factory):
    """test_reliability's study of issue 12's failures (contended, frozen, killed twice, a torn
    curve line, resumed): its regression tests and test_tune's fault tests read it."""
    from tests.test_reliability import run_killed_study

    return run_killed_study(tmp_path_factory)


class Interrupt(Exception):
    """Raised from a report hook to cut a trial short, as a kill would."""


def assert_resume_matches_whole(cfg, tmp_path, cut_at: int = 4) -> None:
    """Run ``cfg`` whole, then cut at step ``cut_at`` and resumed from its checkpoint: both end
    with the same losses and the same curve (and the resume ignores the caller's RNG)."""
    import torch

    from study import record
    from study.trial.run import run_trial

    whole = run_trial(cfg, out_dir=tmp_path / "whole")

    def stop(metrics, checkpoint):
        if metrics["step"] == cut_at:
            raise Interrupt

    try:
        run_trial(cfg, report=stop, out_dir=tmp_path / "cut")
    except Interrupt:
        pass
    else:
        raise AssertionError(f"the trial was not cut at step {cut_at}")
    torch.manual_seed(12345)  # the resumed run must not depend on the caller's RNG
    resumed = run_trial(cfg, resume_from=tmp_path / "cut" / "checkpoint", out_dir=tmp_path / "cut")
    assert resumed["eval_loss"] == whole["eval_loss"]
    assert resumed["train_loss"] == whole["train_loss"]
    assert record.read_curve(tmp_path / "cut") == record.read_curve(tmp_path / "whole")
