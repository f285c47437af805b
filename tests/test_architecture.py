"""The project's shape, read from the code: one owner of the trial directory, no import circles,
Ray and analysis only where they belong, no module over 400 lines.

The rule for trial- and study-directory files (the names in ``study.record.FILE_NAMES``):
- outside ``study/record.py`` no string literal (docstrings aside; f-string parts included)
  names one: a ``*.json`` / ``*.jsonl`` name anywhere in the string, the directory names
  ``adapter`` / ``checkpoint`` as the whole string or as a path segment (``"checkpoint/"``);
- outside ``study/record.py`` the record's name constants (``record.CONFIG``, ...) appear only
  inside f-strings (messages), never in a path, so every path to such a file comes from a
  function of ``study.record``, and no module opens or reads one of those paths itself.
Files that transformers or PEFT read and write in their own directories (a model's
``config.json``, ``adapter_config.json``) are not trial-directory files: they never need
naming here, and ``adapter_config.json`` does not match (the match is on the whole file name).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from study import record

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "analysis", "lora_impl", "search_spaces", "bench")
OWNER = ROOT / "study" / "record.py"
RAY_MODULES = {"study.search.tuner", "study.search.searcher", "study.search.asha",
               "study.search.callbacks", "study.search.trainable"}
IO_METHODS = {"read_text", "write_text", "read_bytes", "write_bytes", "open"}


def sources() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the checked packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are module, class or function docstrings."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        # attribute docstrings: a string expression right after an annotated assignment
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for before, after in zip(body, body[1:]):
                if (
                    isinstance(before, (ast.AnnAssign, ast.Assign))
                    and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                ):
                    ids.add(id(after.value))
    return ids


def names_a_record_file(text: str, in_path: bool = False) -> str | None:
    """The trial/study file name ``text`` contains (by the rule in the module docstring).

    ``in_path``: the string is an operand of ``/`` or an argument of ``Path(...)`` and
    similar, where a bare directory name (``"checkpoint"``) is a path too.
    """
    for name in record.FILE_NAMES:
        if "." in name:
            if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text):
                return name
        elif (in_path and text == name) or re.search(rf"(^|/){name}/|/{name}$", text):
            return name
    return None


PATH_CALLS = {"Path", "PurePath", "join", "joinpath", "with_name", "glob", "rglob"}


def path_operands(tree: ast.AST) -> set[int]:
    """ids of string constants used to build a path: ``d / "x"``, ``Path(d, "x")``, ..."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            ids |= {id(n) for n in (node.left, node.right) if isinstance(n, ast.Constant)}
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in PATH_CALLS:
                ids |= {id(a) for a in node.args if isinstance(a, ast.Constant)}
    return ids


def test_trial_file_names_are_literals_only_in_the_owner():
    offenders = []
    for module, path in sources().items():
        if path == OWNER:
            continue
        tree = ast.parse(path.read_text())
        skip, paths = docstring_nodes(tree), path_operands(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found = id(node) not in skip and names_a_record_file(node.value, id(node) in paths)
                if found:
                    offenders.append(f"{module}:{node.lineno} {found!r} in {node.value!r}")
    assert offenders == []


def _record_aliases(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names bound to the study.record module, names imported from it)."""
    modules, members = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "study":
            modules |= {a.asname or a.name for a in node.names if a.name == "record"}
        elif isinstance(node, ast.ImportFrom) and node.module == "study.record":
            members |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name == "study.record" and a.asname}
    return modules, members


def _file_constants() -> set[str]:
    return {k for k, v in vars(record).items() if isinstance(v, str) and v in record.FILE_NAMES}


# The chaos run damages record files on purpose, by name (bench/chaos.py, docs/RELIABILITY.md):
# it is the one other place that must know where each file lies.
DAMAGES_RECORDS = {"bench.chaos", "bench.chaos_cases"}


def test_record_file_constants_appear_only_in_messages_and_no_module_reads_record_paths():
    constants = _file_constants()
    assert {"CONFIG", "METRICS", "CURVE", "STATUS", "STUDY", "CHECKPOINT"} <= constants
    offenders = []
    for module, path in sources().items():
        if path == OWNER or module in DAMAGES_RECORDS:
            continue
        tree = ast.parse(path.read_text())
        modules, members = _record_aliases(tree)
        in_fstring = {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr)
                      for n in ast.walk(f)}
        for node in ast.walk(tree):
            named = (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr in constants
            ) or (isinstance(node, ast.Name) and node.id in members & constants)
            if named and id(node) not in in_fstring:
                offenders.append(f"{module}:{node.lineno} uses a record file name in a path")
            # reading or writing a path that record hands out for messages (curve, study.json)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value
                calls = [
                    n
                    for n in ast.walk(target)
                    if isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Attribute)
                    and isinstance(n.func.value, ast.Name)
                    and n.func.value.id in modules
                    and n.func.attr.endswith("_path")
                ]
                if node.func.attr in IO_METHODS and calls:
                    offenders.append(f"{module}:{node.lineno} opens a record file itself")
    assert offenders == []


def test_the_rules_catch_what_they_are_for():
    """The checks above fail on the patterns they exist to catch (so they are not vacuous)."""
    assert names_a_record_file(['trial_dir / ', 'metrics.json', ''][1]) == "metrics.json"
    assert names_a_record_file("/curve.jsonl") == "curve.jsonl"
    assert names_a_record_file("checkpoint/trainable.safetensors") == "checkpoint"
    assert names_a_record_file("checkpoint", in_path=True) == "checkpoint"
    assert names_a_record_file("adapter") is None  # a word in a message
    tree = ast.parse('p = trial_dir / "checkpoint"; q = Path(d, "adapter"); w = "adapter"')
    paths = path_operands(tree)
    flagged = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and names_a_record_file(n.value, id(n) in paths)
    ]
    assert flagged == ["checkpoint", "adapter"]
    assert names_a_record_file("adapter_config.json") is None  # PEFT's file, not ours
    assert names_a_record_file("resuming from its newer checkpoint") is None  # prose
    tree = ast.parse("from study import record\np = d / record.METRICS\nm = f'no {record.CONFIG}'")
    modules, _ = _record_aliases(tree)
    in_fstring = {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr)
                  for n in ast.walk(f)}
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.value.id in modules]
    assert [id(n) in in_fstring for n in uses] == [False, True]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``module`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            # `from study import record` names a module; `from lora_impl import LoraSpec` an
            # attribute of the package: the edge goes to the module, or to the package
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = sources()
    known = set(files)
    return {m: _imports(m, p, known) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def entry_points() -> set[str]:
    """study modules run as ``python -m``: they have an ``if __name__ == "__main__"`` block."""
    return {
        m
        for m, p in sources().items()
        if m.startswith("study.") and '__name__ == "__main__"' in p.read_text()
    }


def test_analysis_is_imported_by_study_only_from_its_entry_points():
    graph, entries = import_graph(), entry_points()
    assert {"study.tune", "study.train_one", "study.reproduce", "study.export"} <= entries
    offenders = [
        f"{m} imports {', '.join(sorted(d for d in deps if d.startswith('analysis')))}"
        for m, deps in graph.items()
        if m.startswith("study")
        and m not in entries
        and any(d.startswith("analysis") for d in deps)
    ]
    assert offenders == []


def test_analysis_imports_from_study_only_the_records_and_the_metric_names():
    graph = import_graph()
    allowed = {"study.record", "study.journal", "study.metrics", "study.outdir"}
    used = {d for m, deps in graph.items() if m.startswith("analysis") for d in deps}
    assert {d for d in used if d.startswith("study")} <= allowed


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_ray_only_at_the_edge_and_analysis_free_of_torch_and_ray():
    files = sources()
    ray_users = {m for m, p in files.items() if m.startswith("study") and "ray" in _third_party(p)}
    assert ray_users <= RAY_MODULES and "study.search.trainable" in ray_users
    heavy = {m for m, p in files.items() if m.startswith("analysis")
             and _third_party(p) & {"torch", "ray"}}
    assert heavy == set()
    assert _third_party(OWNER) & {"torch", "ray"} == set()


# The layers of study/ (issue 32). Every top-level module of study/ is listed: a new one is
# placed here on purpose. The shared contracts import only each other; the one-trial package
# imports the contracts and itself (never the search, the cost model or Ray); the cost model
# adds the one-trial package; the search adds the cost model; the entry points may import all.
CONTRACTS = {"study", "study.sections", "study.sections_run", "study.config", "study.fields",
             "study.record", "study.files", "study.metrics", "study.journal", "study.outdir",
             "study.cli"}
ENTRY_POINTS = {"study.tune", "study.train_one", "study.reproduce", "study.export",
                "study.forkserver"}
PACKAGES_OF_STUDY = {"study.trial", "study.cost", "study.search"}
TOP_LEVEL = CONTRACTS | ENTRY_POINTS | PACKAGES_OF_STUDY
LAYERS = {  # layer -> the layers it may import
    "contracts": {"contracts"},
    "study.trial": {"contracts", "study.trial"},
    "study.cost": {"contracts", "study.trial", "study.cost"},
    "study.search": {"contracts", "study.trial", "study.cost", "study.search"},
}


def layer(module: str) -> str | None:
    """The layer of a study module: contracts, one of the three packages, or None (an entry
    point, which may import anything)."""
    if module in CONTRACTS:
        return "contracts"
    return next((p for p in PACKAGES_OF_STUDY if module == p or module.startswith(p + ".")), None)


def layering_offenders(graph: dict[str, set[str]], third_party: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the layering rule: ``module imports target`` lines."""
    out = []
    for module in sorted(set(graph) | set(third_party), key=list({**graph, **third_party}).index):
        mine = layer(module)
        if mine is None:
            continue
        for dep in sorted(graph.get(module, ())):
            theirs = layer(dep)
            if dep.startswith("study") and (theirs is None or theirs not in LAYERS[mine]):
                out.append(f"{module} imports {dep}")
        if mine != "study.search" and "ray" in third_party.get(module, set()):
            out.append(f"{module} imports ray")
    return out


def test_study_top_level_is_the_listed_modules():
    top = {m for m in sources() if m.startswith("study") and m.count(".") <= 1}
    assert top == TOP_LEVEL


def test_layering_rule():
    files = sources()
    third = {m: _third_party(p) for m, p in files.items() if m.startswith("study")}
    assert layering_offenders(import_graph(), third) == []


def test_layering_rule_fails_when_a_trial_module_imports_the_search():
    graph = {"study.trial.run": {"study.search.plan", "study.record"},
             "study.trial.data": {"study.cost.estimate"},
             "study.cost.timing": {"study.trial.data"},
             "study.record": {"study.trial.data"},
             "study.tune": {"study.search.tuner"}}
    third = {"study.trial.train": {"ray", "torch"}}
    assert layering_offenders(graph, third) == [
        "study.trial.run imports study.search.plan",
        "study.trial.data imports study.cost.estimate",
        "study.record imports study.trial.data",
        "study.trial.train imports ray",
    ]
SIZE_CHECKED = ("study", "analysis", "lora_impl")
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 350


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than ``limit`` lines, its ``def``
    line to its last, docstring included."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > limit
    ]


def test_no_function_over_60_lines_and_no_module_over_350():
    long = {}
    for module, path in sources().items():
        if module.split(".")[0] not in SIZE_CHECKED:
            continue
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long[module] = len(text.splitlines())
        for name, lines in long_functions(ast.parse(text)):
            long[f"{module}.{name}"] = lines
    assert long == {}


def test_the_size_rule_finds_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    assert long_functions(ast.parse(f"def f():\n{body}\n")) == [("f", 61)]
    assert long_functions(ast.parse(f"class C:\n  def g(self):\n{body}\n")) == [("g", 61)]
    assert long_functions(ast.parse("def f():\n    return 1\n")) == []
