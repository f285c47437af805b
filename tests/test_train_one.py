"""python -m study.train_one: help, one-line errors with exit code 2, a real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from study.train_one import FLAGS, main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--model",
    "tiny-llama",
    "--size",
    "32",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--batch-size",
    "4",
    "--dtype",
    "fp32",
]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.train_one", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_explains_every_flag():
    res = cli("--help")
    assert res.returncode == 0
    for flag in FLAGS:
        assert f"--{flag.replace('_', '-')}" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rank", "abc"], "argument --rank: invalid int value: 'abc'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--bits", "3"], "quant.bits must be one of 4, 8, 16, got 3"),
        (["--method", "full", "--bits", "4"], "method=full needs quant.bits=16"),
        (["--model", "no-such-model", "--steps", "1"], "unknown model 'no-such-model'"),
        (["--model", "tiny-llama", "--size", "999999"], "exceeds the"),
        (["--model", "tiny-llama", "--targets", "c_attn"], "target 'c_attn' matches no module"),
        (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path):
    res = cli(*args, "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    lines = [
        ln
        for ln in res.stderr.splitlines()
        if ln.strip() and "Warning" not in ln and "warn" not in ln and "kernels" not in ln
    ]
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_a_tiny_run_writes_a_trial(tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_text("lora:\n  rank: 2\n  targets: qv\ntrain:\n  lr: 0.001\n")
    assert main([*TINY, "--config", str(config), "--rank", "4", "--out", str(tmp_path / "t")]) == 0
    saved = json.loads((tmp_path / "t" / "config.json").read_text())
    assert saved["lora"]["rank"] == 4 and saved["lora"]["targets"] == "qv"  # flag beats file
    assert saved["train"]["lr"] == 0.001
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["step"] == 4
    captured = capsys.readouterr()
    assert "eval_loss" in captured.out
    bar = captured.err.split("\r")[-1]  # tqdm's last refresh of the progress bar
    assert "loss=" in bar and "tok/s=" in bar, captured.err[-500:]
