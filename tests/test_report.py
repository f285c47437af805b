"""`python -m analysis report`: valid figures, a self-contained report.html (checked in headless
Chromium over the DevTools protocol), and the data behind each figure (analysis.figure_data)."""

from __future__ import annotations

import base64
import html
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape

from analysis import figure_data
from analysis.__main__ import default_out, main
from analysis.load import TRIAL_COLUMNS
from tests.conftest import copy_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(multi_study, tmp_path_factory) -> Path:
    """The report of the shared study, built by the command line (output outside the study)."""
    before = sorted(p.relative_to(multi_study) for p in multi_study.rglob("*"))
    out = tmp_path_factory.mktemp("report") / "r"
    assert main(["report", str(multi_study), "--out", str(out)]) == 0
    assert sorted(p.relative_to(multi_study) for p in multi_study.rglob("*")) == before
    return out


class _Refs(html.parser.HTMLParser):
    """Every tag and every attribute value that could load or link to another file."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action", "background"):
                self.refs.append((tag, name, value or ""))


def test_report_files_are_valid_png_svg_and_html_is_self_contained(report):
    from PIL import Image

    pngs = sorted((report / "figures").glob("*.png"))
    svgs = sorted((report / "figures").glob("*.svg"))
    assert len(pngs) >= 10 and [p.stem for p in pngs] == [s.stem for s in svgs]
    names = {p.stem for p in pngs}
    # (no "factors": the factor-effects figure draws finished runs, too few of them vary here)
    assert {"pareto_eval_loss_peak_mem_mb", "curves", "seeds"} <= names
    assert {f"pareto_eval_loss_{r}" for r in figure_data.FRONT_RESOURCES} <= names
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC), png
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            assert image.width > 200 and image.height > 100
    for svg in svgs:
        root = ET.parse(svg).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg", svg

    page = (report / "report.html").read_text()
    parser = _Refs()
    parser.feed(page)
    assert not {"link", "script", "iframe", "object", "embed"} & set(parser.tags)
    assert "url(" not in page and "@import" not in page
    sources = [v for tag, name, v in parser.refs if tag == "img" and name == "src"]
    assert len(sources) == len(pngs)
    assert all(v.startswith("data:image/png;base64,") for v in sources)
    assert all(v.startswith("data:") for _, _, v in parser.refs)  # no other file is referenced
    embedded = {base64.b64decode(v.split(",", 1)[1]) for v in sources}
    assert embedded == {p.read_bytes() for p in pngs}  # each figure exactly as written
    for text in ("python -m study.tune", "search space", "Pareto set", "Generations of the best"):
        assert text in page
    trials = pd.read_csv(report / "trials.csv")
    assert len(trials) == 8 and "pareto_eval_loss_peak_mem_mb" in trials.columns
    assert len(pd.read_csv(report / "curves.csv")) == trials["evals"].sum()


def _leaf_keys(space: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value for every leaf of a search space (a searched one: its choice dict)."""
    leaves = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not {"choice", "loguniform", "uniform"} & set(value):
            leaves.update(_leaf_keys(value, f"{name}."))
        else:
            leaves[name] = value
    return leaves


def test_report_shows_the_recorded_search_space_and_the_best_trials_examples(
    report, multi_study, tmp_path
):
    page = (report / "report.html").read_text()
    record = json.loads((multi_study / "study.json").read_text())
    # the search space recorded by the study, as the template writes it: JSON, HTML-escaped
    space = record["space"]
    searched = {k: v for k, v in _leaf_keys(space).items() if isinstance(v, dict)}
    assert "lora.rank" in searched  # the smoke space searches the rank, among others
    for key in searched:
        leaf = key.rsplit(".", 1)[-1]
        assert escape(json.dumps(leaf)) in page, key  # e.g. &#34;alpha_ratio&#34;
    shown = re.search(r"<summary>search space</summary><pre>(.*?)</pre>", page, re.S)
    assert shown and json.loads(html.unescape(shown.group(1))) == space

    # the generations of the best finished trial on eval_loss, under that trial's heading
    trials = pd.read_csv(report / "trials.csv")
    best = trials[trials["status"] == "finished"].sort_values("eval_loss").iloc[0]
    examples = json.loads((Path(best["trial_dir"]) / "examples.json").read_text())
    assert examples and all(e["prompt"] for e in examples)
    section = page.split("<h2>Generations of the best trials</h2>")[1].split("<h2>")[0]
    heading = escape(f"{best['study']}/{best['group']}/{best['trial']}: ")
    assert section.count(f"<h3>{heading}") == 1
    block = section.split(f"<h3>{heading}")[1].split("<h3>")[0]
    for example in examples:
        for field in ("prompt", "target", "output"):
            if example[field].strip():  # an empty generation leaves nothing to look for
                assert f">{escape(example[field])}</td>" in block, (field, example)
    assert any(e["output"].strip() for e in examples)

    # a generation with markup in it is shown as text (the real ones above may have none)
    from analysis.report import build_report

    study = copy_study(multi_study, tmp_path / "multi")
    tricky = [{**examples[0], "output": '<b>x & "y"</b>'}, *examples[1:]]
    (study / best["group"] / best["trial"] / "examples.json").write_text(json.dumps(tricky))
    page = build_report([study], tmp_path / "out").read_text()
    assert ">&lt;b&gt;x &amp; &#34;y&#34;&lt;/b&gt;</td>" in page and "<b>x" not in page


def _chromium() -> str:
    """Debian's chromium, installed with apt-get when missing and possible (root)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    res = subprocess.run(
        "apt-get update -qq && apt-get install -y -qq chromium",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"apt-get could not install chromium: {res.stderr.strip()[-300:]}")
    return found


def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    from tests.cdp import open_page

    page = (report / "report.html").resolve()
    result = open_page(
        _chromium(),
        page.as_uri(),
        tmp_path,
        expression="Array.from(document.images).map(i => [i.complete, i.naturalWidth])",
    )
    images = result.value
    assert len(images) == len(list((report / "figures").glob("*.png")))
    assert all(complete and width > 0 for complete, width in images), images
    # nothing but the page itself and its data: URLs was requested
    assert result.requests and all(
        u == page.as_uri() or u.startswith("data:") for u in result.requests
    ), result.requests
    with Image.open(io.BytesIO(result.screenshot)) as shot:
        pixels = np.asarray(shot.convert("RGB")).reshape(-1, 3)
    colors, counts = np.unique(pixels, axis=0, return_counts=True)
    background = colors[counts.argmax()]
    drawn = np.any(pixels != background, axis=1).mean()
    assert drawn >= 0.01, f"only {drawn:.2%} of the screenshot differs from the background"


def test_overlaid_studies_each_get_a_front_and_a_pooled_flag(multi_study, tmp_path):
    from analysis.report import build_report

    a = copy_study(multi_study, tmp_path / "a" / "multi")
    b = copy_study(multi_study, tmp_path / "b" / "multi")
    for path in b.glob("*/*/metrics.json"):  # b: the same trials at half the memory
        metrics = json.loads(path.read_text())
        if metrics.get("peak_mem_mb"):
            metrics["peak_mem_mb"] /= 2
            path.write_text(json.dumps(metrics))
    page = build_report([a, b], tmp_path / "out").read_text()
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert trials["study"].value_counts().to_dict() == {"a/multi": 8, "b/multi": 8}
    per_study = trials.groupby("study")["pareto_eval_loss_peak_mem_mb"].sum()
    assert per_study["a/multi"] == per_study["b/multi"] > 0  # each study keeps its own front
    pooled = trials[trials["pareto_eval_loss_peak_mem_mb_pooled"]]
    assert len(pooled) and set(pooled["study"]) == {"b/multi"}  # b dominates its twins in a
    section = page.split("Hypervolume")[1].split("</ul>")[0]
    volumes = dict(re.findall(r"<li>([^<:]+): ([-+.e0-9]+)</li>", section))
    assert float(volumes["b/multi"]) > float(volumes["a/multi"]) >= 0


def test_default_output_directory(tmp_path):
    assert default_out([tmp_path / "a"]) == tmp_path / "a" / "report"
    assert default_out([tmp_path / "a", tmp_path / "b"]) == tmp_path / "report-a+b"


# --- the data behind the figures, on a hand-made table ----------------------------------------


def table(rows: list[dict]) -> pd.DataFrame:
    """A trial table shaped like analysis.load's, with defaults for unset columns."""
    base = {c: np.nan for c in TRIAL_COLUMNS}
    base.update(study="s", group="search", method="lora", baseline=False, status="finished")
    filled = [{**base, "trial": f"t{i}", **r} for i, r in enumerate(rows)]
    return pd.DataFrame(filled, columns=TRIAL_COLUMNS)


def test_pareto_info_front_of_finished_trials_and_step_line():
    trials = table(
        [
            {"eval_loss": 3.0, "peak_mem_mb": 100, "rank": 2, "targets": "qv", "bits": 4},
            {"eval_loss": 2.0, "peak_mem_mb": 200, "rank": 8, "targets": "qv", "bits": 16},
            {"eval_loss": 2.5, "peak_mem_mb": 250},  # dominated
            {"eval_loss": 1.0, "peak_mem_mb": 50, "status": "stopped"},  # better, less budget
            {"eval_loss": 1.5, "peak_mem_mb": 300, "method": "full", "baseline": True, "bits": 16},
            {"eval_loss": np.nan, "peak_mem_mb": 10, "status": "errored"},
        ]
    )
    info = figure_data.pareto_info(trials, "peak_mem_mb", "eval_loss")
    front = info.fronts["s"]
    assert front["trial"].tolist() == ["t0", "t1", "t4"]
    assert front["label"].tolist() == ["r2 qv 4b", "r8 qv 16b", "full 16b"]
    assert info.steps["s"][0].tolist() == [100, 200, 300, 300]
    assert info.steps["s"][1].tolist() == [3.0, 2.0, 1.5, 1.5]
    assert info.where == "post" and not info.log_x and info.missing == 1
    assert set(info.points["status"]) == {"finished", "stopped"}
    with_stopped = figure_data.pareto_info(trials, "peak_mem_mb", "eval_loss", include_stopped=True)
    assert with_stopped.fronts["s"]["trial"].tolist() == ["t3"]
    # exact_match is maximised: the front rises with memory
    em = trials.assign(exact_match=[0.2, 0.5, 0.1, 0.9, 0.4, np.nan])
    em_front = figure_data.pareto_info(em, "peak_mem_mb", "exact_match").fronts["s"]
    assert em_front["trial"].tolist() == ["t0", "t1"]
    assert figure_data.pareto_info(trials, "trainable_params", "eval_loss").log_x


def test_pareto_info_overlays_studies_with_their_own_fronts():
    one = table([{"eval_loss": 2.0, "peak_mem_mb": 100}, {"eval_loss": 1.0, "peak_mem_mb": 300}])
    two = table([{"eval_loss": 1.5, "peak_mem_mb": 200}]).assign(study="q4")
    both = pd.concat([one, two], ignore_index=True)
    info = figure_data.pareto_info(both, "peak_mem_mb", "eval_loss")
    assert list(info.fronts) == ["s", "q4"]
    assert len(info.fronts["s"]) == 2 and len(info.fronts["q4"]) == 1


def test_a_study_s_design_orders_levels_and_keeps_finished_lora_runs_only():
    from analysis.design import from_trials
    from analysis.stats import level_means

    trials = table(
        [
            {"targets": "all-linear", "rank": 8, "eval_loss": 1.0, "trial_dir": "/x/search/t0"},
            {"targets": "qv", "rank": 8, "eval_loss": 3.0, "trial_dir": "/x/search/t1"},
            {"targets": "qv", "rank": 16, "eval_loss": 2.0, "trial_dir": "/x/search/t2"},
            {"targets": "qkvo", "rank": 8, "eval_loss": 2.5, "trial_dir": "/x/search/t3"},
            {"targets": "qv", "rank": 2, "eval_loss": 0.1, "status": "stopped",
             "trial_dir": "/x/search/t4"},  # not counted: less budget
            {"targets": None, "method": "full", "eval_loss": 0.5, "trial_dir": "/x/search/t5"},
        ]
    )
    trials["alpha"] = trials["rank"] * 2  # follows rank: no factor of its own
    design = from_trials(trials, {"s": {"space": {}, "objectives": ["eval_loss"]}})
    assert design.factors == ["rank", "targets"] and len(design.runs) == 4
    assert design.orders["targets"] == ["qv", "qkvo", "all-linear"]  # by size, not the table's
    assert design.orders["rank"] == [8, 16]
    levels, points = level_means(design, "targets", "eval_loss")
    assert levels["level"].tolist() == ["qv", "qkvo", "all-linear"]
    assert levels["mean"].tolist() == [2.5, 2.5, 1.0]
    assert sorted(points["level"].tolist()) == [0, 0, 1, 2]


def test_curves_info_marks_asha_stops():
    trials = table(
        [
            {"rank": 4, "status": "finished"},
            {"rank": 2, "status": "stopped"},
            {"method": "full", "baseline": True, "group": "baselines"},
        ]
    )
    curves = pd.DataFrame(
        [
            ("s", "search", "t0", 2, 3.0),
            ("s", "search", "t0", 4, 2.5),
            ("s", "search", "t1", 2, 3.5),
            ("s", "baselines", "t2", 2, 3.2),
        ],
        columns=["study", "group", "trial", "step", "eval_loss"],
    )
    info = figure_data.curves_info(trials, curves, "rank")
    assert info.levels == ["2", "4", "full"]
    assert [(line.trial, line.level, line.steps.tolist()) for line in info.lines] == [
        ("t0", "4", [2.0, 4.0]),
        ("t1", "2", [2.0]),
        ("t2", "full", [2.0]),
    ]
    assert info.stops[["trial", "step", "value"]].values.tolist() == [["t1", 2.0, 3.5]]


def test_seeds_info_full_first_then_lora_variants_by_size():
    trials = table(
        [
            {"rank": 8, "targets": "qv", "bits": 16, "trainable_params": 800, "eval_loss": 2.0},
            {"rank": 8, "targets": "qv", "bits": 16, "trainable_params": 800, "eval_loss": 3.0},
            {"rank": 2, "targets": "qv", "bits": 16, "trainable_params": 200, "eval_loss": 2.8},
            {"method": "full", "baseline": True, "bits": 16, "trainable_params": 1e5},
            {"method": "base", "baseline": True, "bits": 16, "trainable_params": 0},
        ]
    )
    info = figure_data.seeds_info(trials)
    assert info.labels == ["full 16b", "r2 qv 16b", "r8 qv 16b"]
    assert info.methods == ["full", "lora", "lora"]
    assert info.counts.tolist() == [1, 1, 2]
    assert info.values["eval_loss"][2] == 2.5  # the median of the variant's two trials
    assert info.metrics == ["trainable_params", "step_ms", "peak_mem_mb", "eval_loss"]


def test_render_draws_errored_stopped_and_baseline_points(tmp_path):
    from analysis import render

    trials = table(
        [
            {"eval_loss": 2.0, "peak_mem_mb": 100, "rank": 8, "targets": "qv", "bits": 4},
            {"eval_loss": 1.0, "peak_mem_mb": 50, "status": "stopped", "rank": 2},
            {"eval_loss": 3.0, "peak_mem_mb": 80, "status": "errored", "rank": 4},
            {"eval_loss": 2.5, "peak_mem_mb": 90, "method": "base", "baseline": True},
            {"eval_loss": 1.5, "peak_mem_mb": 300, "method": "full", "baseline": True},
        ]
    )
    trials["test_loss"] = trials["eval_loss"] + 0.1
    fig = render.pareto_figure(figure_data.pareto_info(trials, "peak_mem_mb", "eval_loss"))
    ax = fig.axes[0]
    # 5 trials, plus the test values of the 3 front points (base, r8, full)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 5 + 3
    assert {t.get_text() for t in ax.texts} == {"base", "r8 qv 4b", "full"}
    png, svg = render.save(fig, tmp_path / "p")
    assert png.read_bytes().startswith(PNG_MAGIC) and ET.parse(svg).getroot().tag.endswith("svg")


def test_plot_anytime_draws_without_pyplot_or_changing_the_backend(tmp_path):
    """analysis.anytime draws like analysis.render: no pyplot, the caller's backend untouched
    (in a fresh interpreter, since this test session may have imported pyplot already)."""
    from PIL import Image

    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from analysis.anytime import anytime_info, plot_anytime\n"
        "runs = {'a': [[(50, 1.0, True), (50, 0.6, True)]], 'b': [[(100, 0.5, True)]]}\n"
        "info = anytime_info(runs, total=100, reference=0.5, points=11)\n"
        f"plot_anytime(info, {str(tmp_path / 'anytime.png')!r}, highlight='a')\n"
        "print('BACKEND', matplotlib.get_backend())\n"
        "print('PYPLOT', 'matplotlib.pyplot' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert "BACKEND svg" in lines and "PYPLOT False" in lines, lines
    data = (tmp_path / "anytime.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (750, 450)  # 7.5 x 4.5 inches at the default 100 dpi


def test_a_tpe_study_without_pairs_says_so_and_leads_with_what_needs_none(report):
    """One replicate and a log-uniform lr: no comparison has 5 pairs (issue 17, acceptance 4)."""
    page = (report / "report.html").read_text()
    heads = re.findall(r"<h2>(.*?)</h2>", page)
    assert heads[:4] == ["The answer", "Recommendations", "Parameter importance",
                         "Factor effects"]
    answer = page[page.index("<ul class='answer'>"):page.index("<h2>Recommendations</h2>")]
    assert "No two levels of any factor have 5 or more matched pairs" in answer
    assert "each configuration ran once" in answer
    # the command of each recommendation prints whole, below the table (a cell cut it off)
    recs = page[page.index("<h2>Recommendations</h2>"):page.index("<h2>Parameter importance")]
    assert re.search(r"<pre>python -m study.train_one --config \S+config.json --out ", recs)
    assert pd.read_csv(report / "stats" / "comparisons.csv").empty
    assert len(pd.read_csv(report / "stats" / "recommendations.csv"))
