"""Every `python -m study...` / `python -m analysis` command in the README and in every docs/*.md
page still parses (flags and values)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))


def _command(line: str) -> tuple[str, list[str]] | None:
    """(module, arguments) of a `python -m study...` or `python -m analysis` line, else None."""
    line = line.split(" #")[0].strip()
    if not line.startswith("python -m "):
        return None
    words = shlex.split(line.split("&&")[0])
    if not words[2].startswith(("study", "analysis")):  # not `python -m venv`
        return None
    return words[2], words[3:]


def commands_in(doc: Path) -> list[tuple[str, list[str]]]:
    """(module, arguments) of each command in one page: its code blocks' lines, and the inline
    code spans of its prose that give arguments (`python -m study.tune --address HEAD:6379 ...`;
    `python -m analysis report` alone names the command, it is not one to run)."""
    page = doc.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", page, flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")  # join continued lines
    out = [c for c in map(_command, text.splitlines()) if c]
    prose = re.sub(r"```.*?```", "", page, flags=re.S).replace("\n", " ")
    for span in re.findall(r"`(python -m [^`]*)`", prose):
        command = _command(span)
        if command and len(command[1]) > (command[0] == "analysis"):
            out.append(command)
    return out


def documented_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of each command line in the docs' code blocks."""
    return [command for doc in DOCS for command in commands_in(doc)]


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


def test_the_readme_and_the_reference_pages_are_all_checked():
    """The README's first study and the pages its reference moved to (issue 36) are read."""
    counts = {doc.name: len(commands_in(doc)) for doc in DOCS}
    assert counts["README.md"] >= 10, counts
    for page in ("STUDY.md", "REPORT.md", "TRIAL.md", "TASKS.md", "GUIDE.md"):
        assert counts[page] >= 2, counts


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
