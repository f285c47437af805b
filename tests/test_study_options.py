"""study.tune's flags are generated from StudyOptions' fields: each field is a flag with its
docstring and default in --help, a default is written once (the dataclass's), a new field is a
new flag, and the flags that define a study are the fields marked so."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from study.fields import attribute_docs
from study.search import options as O
from study.search.options import StudyOptions, build_parser, flag, flag_name, parse_options


def _help_text(cls: type = StudyOptions) -> str:
    return " ".join(build_parser("doc", cls).format_help().split())  # argparse wraps lines


def test_help_lists_every_field_with_its_docstring_and_default(capsys):
    from study.tune import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    docs = attribute_docs(StudyOptions)
    for f in dataclasses.fields(StudyOptions):
        assert docs.get(f.name), f"StudyOptions.{f.name} has no docstring"
        entry = re.search(rf"{re.escape(flag_name(f.name))}\b[^-]*?{re.escape(docs[f.name][:30])}",
                          shown)
        assert entry, f"{flag_name(f.name)} or its docstring is missing from --help"
    assert "--num-samples NUM_SAMPLES configurations searched (default: 8;" in shown
    assert "--max-t MAX_T ASHA: the most steps a trial runs (default: the space's train.steps, " \
           "else 1000)" in shown
    assert "--repeats REPEATS runs of each configuration" in shown and "(default: 1)" in shown
    assert "(default: $LORA_STUDY_RESULTS where set, else results)" in shown
    assert "the full run trains at train.lr 3e-05" in shown


def test_the_fallbacks_shown_are_the_named_constants_the_plan_uses():
    assert (O.DEFAULT_NUM_SAMPLES, O.DEFAULT_MAX_T, O.FULL_BASELINE_LR) == (8, 1000, 3e-5)
    search = Path(O.__file__).parent
    others = "\n".join(p.read_text() for p in search.glob("*.py") if p.name != "options.py")
    for name in ("DEFAULT_NUM_SAMPLES", "DEFAULT_MAX_T", "FULL_BASELINE_LR"):
        assert re.search(rf"\b{name}\b", others), f"the plan does not use {name}"
    assert not re.search(r"\b(1000|3e-5)\b|or 8\b", others)  # no fallback typed again


def test_no_default_is_written_twice_the_parser_takes_the_dataclass_defaults(monkeypatch):
    monkeypatch.delenv(O.RESULTS_ENV, raising=False)
    assert parse_options([]) == StudyOptions()
    parser = build_parser()
    for f in dataclasses.fields(StudyOptions):
        default = parser.get_default(f.name)
        if isinstance(default, list):  # a repeatable flag collects into a list
            default = tuple(default)
        assert default == getattr(StudyOptions(), f.name), f.name
    # the only add_argument in the module is the generated one: no flag carries its own default
    source = Path(O.__file__).read_text()
    assert source.count("add_argument(") == 1
    assert not re.search(r"default=(['\"\d]|Path\()", source.split("class StudyOptions")[1]
                         .split("def flag_name")[1])


def test_a_default_from_the_environment_is_the_dataclass_and_the_parser_alike(monkeypatch,
                                                                                tmp_path):
    monkeypatch.setenv(O.RESULTS_ENV, str(tmp_path / "elsewhere"))
    assert StudyOptions().storage_path == tmp_path / "elsewhere"
    assert parse_options([]).storage_path == tmp_path / "elsewhere"
    assert parse_options(["--storage-path", "x"]).storage_path == Path("x")
    assert "(default: $LORA_STUDY_RESULTS where set, else results)" in _help_text()


def test_a_new_field_gets_its_flag_without_touching_the_parser():
    @dataclasses.dataclass(frozen=True)
    class WiderOptions(StudyOptions):
        warm_start: str | None = dataclasses.field(
            default=None, metadata=flag(study=True, unset="no earlier study"))
        """earlier studies whose trials the sampler starts from (a field this test invents)"""
        patience: int = 3
        """evaluations without improvement before a trial stops (also invented)"""

    given = parse_options(["--warm-start", "a,b", "--patience", "5", "--seed", "2"],
                          cls=WiderOptions)
    assert (given.warm_start, given.patience, given.seed) == ("a,b", 5, 2)
    assert parse_options([], cls=WiderOptions) == WiderOptions()
    shown = _help_text(WiderOptions)
    assert "--warm-start WARM_START earlier studies whose trials the sampler starts from (a " \
           "field this test invents) (default: no earlier study)" in shown
    assert "--patience PATIENCE evaluations without improvement" in shown
    assert "(also invented) (default: 3)" in shown
    assert O.study_flags(WiderOptions)["warm_start"] == "--warm-start"
    assert "patience" not in O.study_flags(WiderOptions)
    with pytest.raises(SystemExit):  # a typed flag refuses another type
        parse_options(["--patience", "many"], cls=WiderOptions)
    with pytest.raises(SystemExit):  # the stock options have no such flag
        parse_options(["--patience", "5"])


def test_the_flags_that_define_a_study_are_the_marked_fields():
    assert O.STUDY_FLAGS == {
        "space": "--space", "set": "--set", "objective": "--objective",
        "num_samples": "--num-samples", "max_t": "--max-t", "grace": "--grace",
        "reduction_factor": "--reduction-factor", "seed": "--seed",
        "max_mem_mb": "--max-mem-mb", "no_baselines": "--no-baselines", "repeats": "--repeats",
        "no_full_baseline": "--no-full-baseline",
        "search": "--search", "scheduler": "--scheduler",
    }


def test_flags_parse_as_typed_and_repeat_where_the_field_is_a_tuple():
    given = parse_options(["--set", "a=1", "--set", "b=2", "--no-baselines", "--search", "grid",
                           "--reduction-factor", "3", "--resource", "x=1"])
    assert given.set == ("a=1", "b=2") and given.resource == ("x=1",)
    assert given.no_baselines is True and given.search == "grid"
    assert given.reduction_factor == 3.0 and isinstance(given.storage_path, Path)
    with pytest.raises(SystemExit):
        parse_options(["--search", "bayes"])  # choices come from the field's metadata
