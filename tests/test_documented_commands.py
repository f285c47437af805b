"""Every `python -m ...` command in the README and the guide still parses (flags and values)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", ROOT / "docs" / "GUIDE.md")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of each command line in the docs' code blocks."""
    out = []
    for doc in DOCS:
        blocks = re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), flags=re.S)
        text = "\n".join(blocks).replace("\\\n", " ")  # join continued lines
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("python -m "):
                words = shlex.split(line.split("&&")[0])
                if words[2].startswith(("study", "analysis")):  # not `python -m venv`
                    out.append((words[2], words[3:]))
    return out


def parser_of(module: str):
    if module == "study.tune":
        from study.tune import parse_args
    elif module == "study.train_one":
        from study.train_one import parse_args
    elif module == "study.reproduce":
        from study.reproduce import parse_args
    elif module == "study.export":
        from study.export import parse_args
    elif module == "analysis":
        from analysis.__main__ import parse_args
    else:
        raise AssertionError(f"a documented command of an unknown entry point: {module}")
    return parse_args


COMMANDS = documented_commands()


def test_the_docs_document_every_entry_point():
    modules = {m for m, _ in COMMANDS}
    entry_points = {"study.tune", "study.train_one", "study.reproduce", "study.export", "analysis"}
    assert entry_points <= modules
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("module, args", COMMANDS, ids=[" ".join(a) or m for m, a in COMMANDS])
def test_documented_command_parses(module, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --out paths point nowhere that exists
    parse = parser_of(module)
    if "--help" in args:
        with pytest.raises(SystemExit) as done:
            parse(args)
        assert done.value.code == 0
        return
    parsed = parse(args)
    if module == "study.train_one" and "--config" not in args:
        from study.train_one import build_config

        build_config(parsed)  # the flags are valid TrialConfig values too
