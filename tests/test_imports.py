"""lora_impl and study never import peft (it is only the test oracle); every test module
collects where the GPU machine's missing packages are missing."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_peft_import_in_sources():
    offenders = [
        str(path.relative_to(ROOT))
        for pkg in ("lora_impl", "study")
        for path in (ROOT / pkg).rglob("*.py")
        if "import peft" in path.read_text() or "from peft" in path.read_text()
    ]
    assert offenders == []


def test_importing_every_module_does_not_load_peft():
    modules = [
        m.name
        for pkg in ("lora_impl", "study")
        for m in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}.")
    ] + ["lora_impl", "study"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from study.trial.models import load_model\n"
        "from study.sections import QuantConfig\n"
        "from lora_impl import inject_lora\n"
        "m, _ = load_model('tiny-llama', QuantConfig(bits=4))\n"
        "inject_lora(m, 'qv')\n"
        "assert 'peft' not in sys.modules, 'peft was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_test_module_collects_where_ray_optuna_datasets_gguf_are_missing():
    """`make gpu-check` runs `pytest -m gpu` on a machine without them: a test module that
    imports one at its top, without importorskip, stops the whole collection there (issue 16's
    test_replicates.py did, seen only in make test-slow's dry run)."""
    from tests.blocking import ENV, GPU_MACHINE_LACKS

    env = {**os.environ, ENV: ",".join(GPU_MACHINE_LACKS)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p",
         "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert done.returncode in (0, 5), done.stdout[-3000:]  # 5: nothing collected, no error
    assert "error" not in done.stdout.splitlines()[-1].lower(), done.stdout[-3000:]
