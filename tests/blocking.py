"""Make packages unimportable, to prove code runs without them (the GPU machine lacks them).

    LORA_STUDY_BLOCK_IMPORTS=ray,optuna,datasets,gguf python -m pytest -m gpu   # conftest reads it
    block(["ray", "optuna"])                                                     # in a script

An import of a blocked package (or any of its submodules) raises ModuleNotFoundError, as it
would where the package is not installed, so ``pytest.importorskip`` and lazy imports behave as
they will there; ``importlib.util.find_spec`` finds none (transformers probes optional packages
so: its Trainer imports where ``datasets`` is missing, and must here too).
"""

from __future__ import annotations

import importlib.abc
import os
import sys

ENV = "LORA_STUDY_BLOCK_IMPORTS"
GPU_MACHINE_LACKS = ("ray", "optuna", "datasets", "gguf")


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by {ENV})",
                                      name=fullname)
        return None


def block(names) -> None:
    """Block ``names`` from now on in this process (already imported ones are refused too)."""
    names = frozenset(n.strip() for n in names if n.strip())
    if not names:
        return
    loaded = sorted(m for m, module in sys.modules.items()
                    if m.split(".")[0] in names and module is not None)  # None: blocked already
    if loaded:
        raise RuntimeError(f"already imported, cannot be blocked: {', '.join(loaded[:5])}")
    sys.meta_path.insert(0, _Blocker(names))
    for name in names:  # None in sys.modules: find_spec answers None, an import still fails
        sys.modules[name] = None


def block_from_env() -> None:
    """``block`` what ``$LORA_STUDY_BLOCK_IMPORTS`` (comma-separated) names."""
    block(os.environ.get(ENV, "").split(","))
