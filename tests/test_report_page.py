"""The report's one way to render (issue 36): the jinja2 template escapes every value, one number
formatter, one Pareto-panel value for a study's trials and an external table's runs, and no HTML
built in Python strings under analysis/."""

from __future__ import annotations

import ast
import html.parser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib

from analysis import figure_data
from analysis.__main__ import main
from analysis.page import TEMPLATES, render_page, section
from analysis.tables import table
from study.metrics import number

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert(1)</script>"


@pytest.mark.parametrize("value, digits, text", [
    (None, 4, "-"), (float("nan"), 4, "-"), (pd.NA, 4, "-"), (np.float64("nan"), 4, "-"),
    (8, 4, "8"), (np.int64(8), 4, "8"), (16.0, 4, "16"),  # a level, not "16.0"
    (2.34567, 4, "2.346"), (2.34567, 2, "2.3"), (0.000123456, 4, "0.0001235"),
    (1e-5, 4, "1e-05"), (123456.7, 4, "123457"),  # no exponent for a large count
    (1e20, 4, "1e+20"), (True, 4, "True"), ("qv", 4, "qv"),
])
def test_one_number_format_for_the_live_table_the_summary_and_the_report(value, digits, text):
    assert number(value, digits) == text


class _Text(html.parser.HTMLParser):
    """The page's tags and its text as a browser reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_markup_in_a_label_or_a_level_shows_as_text(tmp_path):
    """An external table's factor level (and so the run labels built from it) holding a script
    tag: the page has no script element, and the level reads as written."""
    rows = [{"opt": level, "seed": seed, "acc": 0.5 + 0.1 * i + 0.01 * seed, "mem": 1.0 + i}
            for i, level in enumerate(("adam", SCRIPT)) for seed in range(2)]
    csv = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "rep"
    args = ["--factors", "opt", "--quality", "acc:max", "--resources", "mem", "--replicate",
            "seed", "--out", str(out)]
    assert main(["report", "--table", str(csv), *args]) == 0
    page = (out / "report.html").read_text()
    parsed = _Text()
    parsed.feed(page)
    assert "script" not in parsed.tags and SCRIPT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f"opt {SCRIPT}" in "".join(parsed.text)  # the run's label, as text
    assert "trains each recommended configuration again" not in page  # a table has no commands


def test_the_template_escapes_every_kind_of_value():
    frame = pd.DataFrame({"label": [SCRIPT], "eval_loss": [2.34567], "rank": [8.0]})
    sections = [
        section("problems", SCRIPT, warnings=[SCRIPT]),
        section("runs", "All trials", table=table(frame, left=("label",))),
        section("answer", "The answer", sentences=[SCRIPT], notes=[SCRIPT], min_pairs=5),
    ]
    page = render_page(SCRIPT, 1, sections)
    parsed = _Text()
    parsed.feed(page)
    assert "script" not in parsed.tags and SCRIPT not in page
    # the title, the h1, a heading, a warning, a cell, a sentence and a note: all as text
    assert "".join(parsed.text).count(SCRIPT) == 7
    assert "<td>2.346</td><td>8</td>" in page  # one number format in tables


def test_an_external_table_and_a_study_share_one_pareto_value():
    """pareto_info with the table's own directions: its runs have no method or status and
    metrics study.metrics does not name (larger gpu memory worse, larger score better)."""
    runs = pd.DataFrame({"study": "t", "trial": ["2", "3", "4", "5"],
                         "label": ["a", "b", "c", "d"], "score": [0.5, 0.7, 0.6, np.nan],
                         "gpu_gb": [1.0, 2.0, 3.0, 0.5]})
    info = figure_data.pareto_info(runs, "gpu_gb", "score", larger_better=(False, True))
    assert info.fronts["t"]["label"].tolist() == ["a", "b"] and info.missing == 1
    assert info.larger_y_better and info.where == "post"
    assert info.steps["t"][0].tolist() == [1.0, 2.0, 3.0]
    assert set(info.points["status"]) == {"finished"} and not info.points["baseline"].any()
    with pytest.raises(ValueError, match="unknown metric 'gpu_gb'"):
        figure_data.pareto_info(runs, "gpu_gb", "score")  # a study's metrics only, by default


TAGS = ("h1", "h2", "h3", "p>", "p ", "table", "td", "th", "tr>", "li>", "ul", "div", "pre>",
        "figure", "img", "details", "code>", "html", "style")


def _html_in_python(path: Path) -> list[str]:
    """html.escape calls and string literals (f-strings too) that hold an HTML tag."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "escape":
            found.append(f"{path.name}:{node.lineno} .escape")
        parts = node.values if isinstance(node, ast.JoinedStr) else [node]
        texts = [p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str)]
        if any(f"<{tag}" in text for text in texts for tag in TAGS):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_html_is_built_in_python_under_analysis():
    found = [hit for p in sorted((ROOT / "analysis").glob("*.py")) for hit in _html_in_python(p)]
    assert found == []


def test_the_templates_ship_with_the_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["analysis"]
    shipped = {p for pattern in patterns for p in (ROOT / "analysis").glob(pattern)}
    assert set(TEMPLATES.glob("*.j2")) <= shipped and len(shipped) >= 2
    assert any(d.startswith("jinja2") for d in config["project"]["dependencies"])
