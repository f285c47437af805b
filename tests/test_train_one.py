"""python -m study.train_one: help, one-line errors with exit code 2, a real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from study.train_one import build_config, main, parse_args

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


def _leaf_fields(cls, prefix=""):
    """(dotted key, field) of every TrialConfig leaf, walked here independently of the CLI."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def test_help_lists_every_config_field_with_its_docstring():
    from study.config import TrialConfig

    res = cli("--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())  # argparse wraps help lines
    options = text.split("trial config (every TrialConfig field")[1]
    keys = [key for key, _ in _leaf_fields(TrialConfig)]
    assert len(keys) >= 35 and "lora.rank" in keys and "quant.type" in keys
    for key in keys:
        assert f"--{key} " in text, key
    # each field's one-line docstring is its help (read from the source, here by hand)
    for key, fragment in [
        ("lora.rank", "Adapter rank r"),
        ("quant.double_quant", "quantize the block scales too"),
        ("train.min_lr_ratio", "fraction of the peak learning rate"),
        ("seed", "never the data split"),
    ]:
        assert fragment in options.split(f"--{key} ")[1].split(" --")[0], key
    for alias in ("--rank", "--alpha", "--targets", "--bits", "--size", "--task", "--steps"):
        assert f"{alias} " in text, alias


def test_every_config_field_has_a_docstring():
    from study.config import TrialConfig
    from study.fields import config_fields

    missing = [f.key for f in config_fields(TrialConfig) if not f.help]
    assert missing == []


def test_a_new_config_field_gets_its_flag_without_touching_the_cli():
    import dataclasses

    from study.config import LoraConfig, TrialConfig

    @dataclasses.dataclass(frozen=True)
    class WiderLora(LoraConfig):
        warm_start: int = 0
        """Steps to train A alone before B (a field this test invents)."""

    @dataclasses.dataclass(frozen=True)
    class WiderTrial(TrialConfig):
        lora: WiderLora = dataclasses.field(default_factory=WiderLora)

    args = parse_args(["--lora.warm_start", "7", "--rank", "4"], WiderTrial)
    cfg = build_config(args, WiderTrial)
    assert (cfg.lora.warm_start, cfg.lora.rank) == (7, 4)
    assert build_config(parse_args([], WiderTrial), WiderTrial).lora.warm_start == 0
    with pytest.raises(SystemExit):
        parse_args(["--lora.warm_start", "seven"], WiderTrial)
    with pytest.raises(SystemExit):  # the stock config has no such field
        parse_args(["--lora.warm_start", "7"])


def test_flags_parse_to_the_fields_types():
    cfg = build_config(parse_args(["--train.epochs", "0.5", "--lora.rslora", "--quant.type=fp4",
                                   "--bits", "4"]))
    assert cfg.train.steps is None and cfg.train.epochs == 0.5
    assert cfg.lora.rslora is True and cfg.quant.type == "fp4"
    assert build_config(parse_args(["--rslora", "false"])).lora.rslora is False
    assert build_config(parse_args(["--lora.alpha", "none", "--rank", "4"])).lora.alpha == 8.0


def test_epochs_on_the_command_line_replace_the_files_steps_and_none_does_not(tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text("train:\n  steps: 20\n")
    given = build_config(parse_args(["--config", str(config), "--epochs", "1"])).train
    assert (given.steps, given.epochs) == (None, 1.0)
    cleared = build_config(parse_args(["--config", str(config), "--epochs", "none"])).train
    assert (cleared.steps, cleared.epochs) == (20, None)  # the file's steps, not the default


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rank", "abc"], "argument --rank: invalid int value: 'abc'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--bits", "3"], "quant.bits must be one of 4, 8, 16, got 3"),
        (["--method", "full", "--bits", "4"], "method=full needs quant.bits=16"),
        # an unknown model, a size above the data, a target the model lacks: test_reliability.py
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
