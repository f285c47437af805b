"""No code of ours touches a private attribute of a Ray or Optuna object.

The search used to lean on private Ray state (``OptunaSearch._ot_trials``, ``ASHAScheduler.
_trial_info``, ``_Bracket._rungs``, ...), which any Ray upgrade can change silently. The rule,
checked on the project's packages and ``tests/``:

- no ``x._name`` where ``_name`` is a private attribute or method Ray or Optuna define, unless
  ``x`` is ``self`` / ``cls`` in a class of ours that derives from nothing of Ray or Optuna;
- no ``getattr(x, "_name")`` (or set/has/delattr) with such a name;
- no import of a private module of Ray or Optuna (``ray._private``, ``optuna.storages._journal``)
  and no private name imported from one of their modules.

There is no exception today; a private access that cannot be avoided would go into one
documented wrapper named in ``ALLOWED``.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")  # the rule is about them: nothing to check without them
ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("study", "analysis", "lora_impl", "search_spaces", "bench", "tests")
LIBRARIES = ("ray", "optuna")
ALLOWED: set[tuple[str, str]] = set()  # (file relative to the root, private name)
DEFINITION = re.compile(
    r"(?:\bself\.(_[A-Za-z0-9]\w*)\s*(?::[^=]+)?=(?!=)|\bdef (_[A-Za-z0-9]\w*)\s*\(|"
    r"^\s+(_[A-Za-z0-9]\w*)\s*(?::[^=]+)?=(?!=))",
    re.MULTILINE,
)


@functools.cache
def library_private_names() -> frozenset[str]:
    """Private attribute and method names that Ray's and Optuna's own sources define."""
    names = set()
    for package in (ray, optuna):
        for path in Path(package.__file__).parent.rglob("*.py"):
            text = path.read_text(errors="replace")
            for match in DEFINITION.finditer(text):
                names.add(next(g for g in match.groups() if g))
    return frozenset(names)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _library_bases(tree: ast.AST) -> set[str]:
    """Names bound by imports from Ray or Optuna in this module."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            out |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names
                    if a.name.split(".")[0] in LIBRARIES}
    return out


def _stdlib_modules(tree: ast.AST) -> set[str]:
    """Names bound by ``import os`` and the like: ``os._exit`` is the standard library's."""
    return {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.Import) for a in node.names
            if a.name.split(".")[0] in sys.stdlib_module_names}


def violations(source: str, where: str = "<string>") -> list[str]:
    """Every private Ray / Optuna access in ``source`` (the rule of the module docstring)."""
    tree = ast.parse(source)
    private = library_private_names()
    bases = _library_bases(tree)
    stdlib = _stdlib_modules(tree)
    found = []

    def derives_from_library(cls: ast.ClassDef) -> bool:
        for base in cls.bases:
            root = base
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bases:
                return True
        return False

    def visit(node: ast.AST, library_class: bool) -> None:
        if isinstance(node, ast.ClassDef):
            library_class = derives_from_library(node)
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr in private:
            name = node.value.id if isinstance(node.value, ast.Name) else None
            own = name in ("self", "cls")
            if name not in stdlib and (not own or library_class):
                found.append(f"{where}:{node.lineno}: .{node.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value in private
        ):
            found.append(f"{where}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""
            ]
            for module in modules:
                parts = module.split(".")
                if parts[0] in LIBRARIES and any(_is_private(p) for p in parts):
                    found.append(f"{where}:{node.lineno}: import {module}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
                for alias in node.names:
                    if _is_private(alias.name):
                        found.append(f"{where}:{node.lineno}: from {node.module} import "
                                     f"{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child, library_class)

    visit(tree, False)
    return found


def test_no_private_ray_or_optuna_access_in_the_project():
    found = []
    for package in CHECKED:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            found += [
                v
                for v in violations(path.read_text(), rel)
                if (rel, v.rsplit(".", 1)[-1].strip(" '()")) not in ALLOWED
            ]
    assert found == []


def test_the_rule_catches_what_it_is_for():
    assert {"_ot_trials", "_brackets", "_rungs", "_trial_info"} <= library_private_names()
    caught = violations(
        "from ray.tune.search.optuna import OptunaSearch\n"
        "from ray.tune.schedulers import ASHAScheduler\n"
        "from ray._private import worker\n"
        "from optuna.study import _constrained_optimization\n"
        "def f(search, asha):\n"
        "    search._ot_trials.pop('t')\n"
        "    return asha._brackets[0]._rungs, getattr(asha, '_trial_info')\n"
        "class Mine(ASHAScheduler):\n"
        "    def g(self):\n"
        "        return self._trial_info\n"
    )
    assert [c.split(": ", 1)[1] for c in caught] == [
        "import ray._private",
        "from optuna.study import _constrained_optimization",  # a public module, a private name
        "._ot_trials",
        "._rungs",
        "._brackets",
        "getattr(..., '_trial_info')",
        "._trial_info",
    ]
    # the standard library's own private-looking functions are not Ray's (Ray defines `_exit`)
    assert "_exit" in library_private_names()
    assert violations("import os\nos._exit(0)\n") == []
    assert violations("from ray import tune\ntune._exit(0)\n") != []
    # a class of our own keeps its own private fields, even where Ray has one of that name
    assert violations("class Mine:\n    def f(self):\n        return self._metric\n") == []
