"""The CPU trial's host allocator (study.trial.host_memory): the settings do what they say to the
resident memory a trial reports, a bad override is one line, and the trial records its setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.trial import host_memory

ROOT = Path(__file__).resolve().parents[1]
FREED = """
import torch
from study.trial import host_memory
from study.trial.resources import rss_mb
host_memory.configure()
warm = [torch.ones(1 << 20) for _ in range(2)]; del warm  # 4 MB freed: glibc's threshold rises
blocks = [torch.ones(1 << 20) for _ in range(60)]  # 60 blocks of 4 MB
held = rss_mb()
del blocks[1::2]  # every other one freed: holes in the heap
host_memory.trim()
print(held - rss_mb())
"""


def _returned_mb(setting: str) -> float:
    env = {**os.environ, host_memory.ENV: setting}
    out = subprocess.run([sys.executable, "-c", FREED], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._libc() is None, reason="no glibc to set")
def test_glibc_keeps_freed_blocks_resident_and_the_settings_hand_them_back():
    # the 30 freed blocks of 4 MB are 120 MB: glibc's default keeps them (the growth of a CPU
    # trial's peak), a fixed mmap threshold or a trim returns them
    assert _returned_mb("glibc") < 40
    for setting in ("mmap", "trim", "mmap+trim"):
        assert _returned_mb(setting) > 100, setting


def test_a_bad_override_is_one_line_naming_the_settings(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "jemalloc")
    with pytest.raises(ValueError, match="LORA_STUDY_HOST_ALLOCATOR must be one of glibc, trim, "
                                         "mmap, mmap\\+trim, got 'jemalloc'"):
        host_memory.chosen()


def test_the_trial_records_its_setting(tmp_path):
    from study import record
    from study.trial.run import run_trial
    from tests.conftest import tiny_trial

    run_trial(tiny_trial(**{"train.steps": 1}), out_dir=tmp_path)
    expected = host_memory._configured[0] if host_memory._libc() else None
    assert record.read_env(tmp_path)["host_allocator"] == expected == host_memory.chosen()
