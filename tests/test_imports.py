"""lora_impl and study never import peft (it is only the test oracle)."""

from __future__ import annotations

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
        "from study.models import load_model\n"
        "from lora_impl import inject_lora\n"
        "m, _ = load_model('tiny-llama', quant_bits=4)\n"
        "inject_lora(m, 'qv')\n"
        "assert 'peft' not in sys.modules, 'peft was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
