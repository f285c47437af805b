"""analysis on a classify study: accuracy / F1 columns, maximised selection, fronts, the report's
confusion matrices, the model as a factor, the untrained-head base, a damaged labels.json.

The study is hand-made with study.record's writers (no training): search trials of two models,
a base and a full baseline, one trial stopped by ASHA.
"""

from __future__ import annotations

import contextlib
import html.parser
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figure_data
from analysis.__main__ import main
from analysis.classify import confusion_infos
from analysis.load import ResultWarning, load_study
from analysis.selection import best_trial, front_flags, label, several_models
from study import record

LABELS = ["negative", "neutral", "positive"]
TRAIN_COUNTS = {"negative": 120, "neutral": 80, "positive": 100}
MODEL_A, MODEL_B = "org/model-a", "model-b"

# name -> (group, model, method, rank, targets, bits, quant type, scheme (None: not recorded),
#          status, accuracy, f1_macro, peak_mem_mb, confusion (rows true, columns predicted))
TRIALS = {
    "a1": ("search", MODEL_A, "lora", 4, "qv", 16, "nf4", "16", "finished", 0.70, 0.65, 500,
           [[30, 8, 7], [6, 25, 10], [4, 10, 35]]),
    "a2": ("search", MODEL_A, "lora", 8, "all-linear", 4, "nf4", "nf4", "finished", 0.82, 0.70,
           300, [[38, 4, 3], [5, 30, 6], [3, 6, 40]]),
    "b1": ("search", MODEL_B, "lora", 4, "qv", 16, "nf4", "16", "finished", 0.90, 0.80, 900,
           [[40, 3, 2], [5, 30, 6], [1, 4, 44]]),
    # written before quant.scheme existed: analysis derives "fp4" from bits 4 and type fp4
    "b2": ("search", MODEL_B, "lora", 8, "qv", 4, "fp4", None, "finished", 0.88, 0.86, 600,
           [[41, 2, 2], [3, 35, 3], [2, 4, 43]]),
    # better and cheaper, but ASHA stopped it: less budget, never picked by default
    "b3": ("search", MODEL_B, "lora", 2, "qv", 16, "nf4", "16", "stopped", 0.95, 0.94, 100,
           None),
    "base": ("baselines", MODEL_A, "base", 8, "all-linear", 16, "nf4", "16", "finished", 0.33,
             0.20, 200, [[45, 0, 0], [41, 0, 0], [49, 0, 0]]),
    "full": ("baselines", MODEL_A, "full", 8, "all-linear", 16, "nf4", "16", "finished", 0.85,
             0.75, 1500, [[39, 3, 3], [4, 33, 4], [2, 5, 42]]),
}


def config(model, method, rank, targets, bits, kind, scheme) -> dict:
    """A nested TrialConfig as config.json holds it (the shape of TrialConfig.to_dict())."""
    quant = {"bits": bits, "type": kind, "double_quant": False, "int8_threshold": 6.0}
    if scheme is not None:
        quant = {"scheme": scheme, **quant}
    return {
        "method": method,
        "seed": 0,
        "model": {"name": model},
        "lora": {"rank": rank, "alpha": 2.0 * rank, "alpha_ratio": None, "dropout": 0.0,
                 "targets": targets, "rslora": False, "init": "kaiming"},
        "quant": quant,
        "data": {"task": "classify", "source": "builtin", "size": 400, "seq_len": 128},
        "train": {"lr": 3e-4, "steps": 150, "batch_size": 8},
    }


def f1_of(matrix: list[list[int]]) -> dict[str, float]:
    """Each class's F1 from a confusion matrix (rows true, columns predicted)."""
    m = np.array(matrix, dtype=float)
    out = {}
    for i, name in enumerate(LABELS):
        tp, fp, fn = m[i, i], m[:, i].sum() - m[i, i], m[i, :].sum() - m[i, i]
        out[name] = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
    return out


def make_study(root: Path, objectives=("accuracy", "peak_mem_mb"), only=None) -> Path:
    """A classify study directory holding TRIALS (or the names in ``only``)."""
    study = root / "cls"
    record.write_study(study, {"command": ["python", "-m", "study.tune", "--name", "cls"],
                               "space": {}, "objectives": list(objectives), "fixed": {}})
    for name, (group, model, method, rank, targets, bits, kind, scheme, status, acc, f1m, mem,
               confusion) in TRIALS.items():
        if only is not None and name not in only:
            continue
        trial = record.group_dir(study, group) / name
        trial.mkdir(parents=True)
        record.write_config(trial, config(model, method, rank, targets, bits, kind, scheme))
        record.write_labels(trial, LABELS, TRAIN_COUNTS)
        metrics = {"step": 150, "accuracy": acc, "f1_macro": f1m, "f1_weighted": f1m + 0.01,
                   "peak_mem_mb": mem, "train_s": mem / 100, "trainable_params": rank * 1000,
                   "f1_by_class": {n: f1m for n in LABELS},
                   "latency_ms_per_example_unmerged": mem / 50,
                   "latency_ms_per_example_merged": mem / 60}
        steps = [50, 100, 150] if status == "finished" else [50]
        if status == "finished":
            cells = np.array(confusion)
            metrics.update({
                "test_accuracy": float(np.trace(cells) / cells.sum()), "test_f1_macro": f1m - 0.02,
                "test_f1_weighted": f1m - 0.01, "test_confusion": confusion,
                "test_f1_by_class": f1_of(confusion), record.FINAL: True})
        record.write_metrics(trial, metrics)
        record.write_curve(trial, [{"step": s, "train_loss": 1.0 / s, "accuracy": acc * s / 150,
                                    "f1_macro": f1m * s / 150} for s in steps])
        record.write_status(trial, status, step=steps[-1])
    return study


@pytest.fixture
def study(tmp_path) -> Path:
    return make_study(tmp_path)


def load_quietly(study: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultWarning)  # a healthy study loads without warnings
        return load_study(study)


def test_trial_table_has_classification_columns_the_model_and_the_scheme(study):
    trials = load_quietly(study).trials.set_index("trial")
    for column in ("accuracy", "f1_macro", "f1_weighted", "test_accuracy", "test_f1_macro",
                   "test_f1_weighted", "latency_ms_per_example_merged", "model", "scheme",
                   "best_accuracy", "best_f1_macro"):
        assert column in trials.columns, column
    for name, spec in TRIALS.items():
        row = trials.loc[name]
        assert row["model"] == spec[1] and row["task"] == "classify"
        assert row["accuracy"] == spec[9] and row["f1_macro"] == spec[10]
        if spec[8] == "finished":
            cells = np.array(spec[12])
            assert row["test_accuracy"] == pytest.approx(np.trace(cells) / cells.sum())
        else:
            assert pd.isna(row["test_accuracy"])
    assert trials.loc["b2", "scheme"] == "fp4"  # derived: no quant.scheme in its config
    assert trials.loc["a2", "scheme"] == "nf4" and trials.loc["a1", "scheme"] == "16"
    assert trials.loc["b1", "best_accuracy"] == 0.90
    assert trials.loc["b1", "best_accuracy_step"] == 150
    assert trials["exact_match"].isna().all()  # a classify study has none


def test_best_trial_by_accuracy_is_the_highest(study):
    trials = load_quietly(study).trials
    best = best_trial(trials, "accuracy")
    finished = trials[trials["status"] == "finished"]
    assert best["trial"] == "b1" == finished.loc[finished["accuracy"].idxmax(), "trial"]
    assert best_trial(trials, "accuracy", max_mem_mb=650)["trial"] == "b2"  # b1 is over
    assert best_trial(trials, "f1_macro")["trial"] == "b2"
    # the command line agrees, and with no eval_loss in the study its default is accuracy
    for argv in (["best", str(study), "--objective", "accuracy"], ["best", str(study)]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(argv) == 0
        assert out.getvalue().startswith("best accuracy: 0.9  [cls/search/b1] model-b lora r4")


def brute_front(rows: list[tuple[str, float, float]]) -> set[str]:
    """Trials no other beats on both (accuracy higher is better, memory lower is better)."""
    return {
        t for t, acc, mem in rows
        if not any(a2 >= acc and m2 <= mem and (a2, m2) != (acc, mem) for _, a2, m2 in rows)
    }


def test_accuracy_front_equals_brute_force(study):
    trials = load_quietly(study).trials
    finished = trials[trials["status"] == "finished"]
    pool = list(zip(finished["trial"], finished["accuracy"], finished["peak_mem_mb"]))
    expected = brute_front(pool)
    assert expected == {"base", "a2", "b2", "b1"}  # a1 and full are dominated
    flags = front_flags(trials, ["accuracy", "peak_mem_mb"])
    assert set(trials[flags]["trial"]) == expected
    info = figure_data.pareto_info(trials, "peak_mem_mb", "accuracy")
    front = info.fronts["cls"]
    assert set(front["trial"]) == expected
    assert front["x"].tolist() == sorted(front["x"])  # accuracy rises along memory
    assert front["y"].is_monotonic_increasing
    assert front["test"].notna().all()  # test_accuracy, the held-out value of each front point
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["pareto", str(study), "--y", "accuracy"]) == 0
    header, *rows = out.getvalue().splitlines()[1:]
    assert "test_accuracy" in header.split()
    assert {line.split()[2] for line in rows if "[" not in line and "left out" not in line} \
        == expected


def test_two_models_are_told_apart_in_fronts_labels_and_factors(study):
    from analysis import render

    trials = load_quietly(study).trials
    assert several_models(trials)
    info = figure_data.pareto_info(trials, "peak_mem_mb", "accuracy")
    assert info.models == [MODEL_B, MODEL_A]  # sorted full names
    models = dict(zip(info.points["trial"], info.points["model"]))
    assert models["a2"] == MODEL_A and models["b1"] == MODEL_B
    labels = dict(zip(info.points["trial"], info.points["label"]))
    assert labels["a2"] == "model-a r8 all-linear 4b nf4" and labels["b2"] == "model-b r8 qv 4b fp4"
    assert labels["b1"].startswith("model-b r4 qv 16b")
    fig = render.pareto_figure(info)
    ax = fig.axes[0]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"model-a", "model-b"} <= legend
    colour_at = {}
    for collection in ax.collections:
        for (x, y), face in zip(collection.get_offsets(), collection.get_facecolors()):
            colour_at[float(x), float(y)] = tuple(np.round(face, 3))
    point = {r["trial"]: (r["x"], r["y"]) for _, r in info.points.iterrows()}
    assert colour_at[point["a1"]] == colour_at[point["a2"]]  # finished trials of one model
    assert colour_at[point["b1"]] == colour_at[point["b2"]]
    assert colour_at[point["a1"]] != colour_at[point["b1"]]  # ... and another's

    factors = figure_data.shown_factors(trials)
    assert "model" in factors and factors.index("scheme") == factors.index("bits") + 1
    table = figure_data.factor_table(trials, "model", ["accuracy"]).set_index("model")
    assert table.loc["model-b", "best accuracy"] == 0.90  # b3 (0.95) was stopped
    assert table.loc["model-a", "trials"] == 2
    from analysis.design import from_trials

    design = from_trials(trials, {})  # the report's statistics: model and scheme are factors
    assert {"model", "scheme"} <= set(design.factors) and "bits" not in design.factors
    assert [s for s in design.orders["scheme"]] == ["16", "nf4", "fp4"]


def test_one_model_looks_as_before(tmp_path):
    trials = load_quietly(make_study(tmp_path, only={"a1", "a2", "full"})).trials
    assert not several_models(trials)
    info = figure_data.pareto_info(trials, "peak_mem_mb", "accuracy")
    assert info.models == []
    assert set(info.points["label"]) == {"r4 qv 16b", "r8 all-linear 4b nf4", "full 16b"}
    factors = figure_data.shown_factors(trials)
    assert "model" not in factors and "scheme" not in factors  # nf4 only: scheme repeats bits


def test_the_base_of_a_classify_study_is_labelled_untrained(study):
    trials = load_quietly(study).trials
    base = trials[trials["method"] == "base"].iloc[0]
    assert label(base) == "base (untrained head) 16b"
    assert label(base.to_dict() | {"task": "skills"}) == "base 16b"  # a pretrained skill
    curves = figure_data.curves_info(trials, load_quietly(study).curves, "rank", "accuracy")
    assert "base (untrained head)" in curves.levels


class Tables(html.parser.HTMLParser):
    """Every table of an HTML fragment as rows of cell texts (th and td alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def section(page: str, heading: str) -> str:
    assert f"<h2>{heading}</h2>" in page, heading
    return page.split(f"<h2>{heading}</h2>")[1].split("<h2>")[0]


def test_report_shows_the_best_trials_confusion_matrices(study, tmp_path):
    from analysis.report import build_report

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultWarning)
        page = build_report([study], tmp_path / "r").read_text()
    part = section(page, "Confusion matrices of the best trials")
    titles = [t.split(":")[0] for t in part.split("<h3>")[1:]]
    assert titles == ["cls/search/b1", "cls/search/b2", "cls/baselines/full"]  # by accuracy
    parser = Tables()
    parser.feed(part)
    first = parser.tables[0]
    assert first[0] == ["true \\ predicted", *LABELS, "test F1", "train examples"]
    spec = TRIALS["b1"][12]
    f1 = f1_of(spec)
    for row, name, counts in zip(first[1:], LABELS, spec):
        assert row[0] == name and row[1:4] == [str(c) for c in counts]
        assert row[4] == f"{f1[name]:.4g}" and row[5] == str(TRAIN_COUNTS[name])
    # the rest of the report: the study's metrics only, the untrained base named as such
    everything = section(page, "All trials")
    headers = Tables()
    headers.feed(everything)
    columns = headers.tables[0][0]
    assert {"accuracy", "test_accuracy", "f1_macro", "latency_ms_per_example_merged"} <= set(
        columns)
    assert "exact_match" not in columns and "eval_loss" not in columns
    assert "base (untrained head)" in everything
    assert "untrained" in section(page, "Studies")
    assert "<h2>Pareto set: accuracy vs peak_mem_mb</h2>" in page
    figures = {p.stem for p in (tmp_path / "r" / "figures").glob("*.png")}
    assert {"pareto_accuracy_peak_mem_mb", "pareto_accuracy_latency_ms_per_example_merged",
            "pareto_f1_macro_peak_mem_mb", "factors", "curves"} <= figures
    assert not {f for f in figures if "eval_loss" in f or "exact_match" in f or "per_token" in f}
    csv = pd.read_csv(tmp_path / "r" / "trials.csv")
    flagged = set(csv[csv["pareto_accuracy_peak_mem_mb"]]["trial"])
    finished = csv[csv["status"] == "finished"]
    assert flagged == brute_front(
        list(zip(finished["trial"], finished["accuracy"], finished["peak_mem_mb"])))


def test_the_confusion_matrices_follow_the_first_classification_objective(tmp_path):
    study = make_study(tmp_path, objectives=("peak_mem_mb", "f1_macro", "accuracy"))
    data = load_quietly(study)
    found: list[str] = []
    infos = confusion_infos(data.trials, data.studies, found, k=2)
    assert [(i.trial, i.metric) for i in infos] == [("b2", "f1_macro"), ("b1", "f1_macro")]
    assert found == [] and infos[0].named and infos[0].names == LABELS
    assert infos[0].matrix.tolist() == TRIALS["b2"][12]
    assert infos[0].train_counts.tolist() == [120, 80, 100]


def test_a_skills_study_has_no_confusion_section(tmp_path):
    data = load_quietly(make_study(tmp_path))
    skills = data.trials.assign(accuracy=np.nan)  # no trial measured accuracy
    assert confusion_infos(skills, data.studies, []) == []


def test_a_damaged_labels_file_warns_and_the_report_still_builds(study, tmp_path):
    from analysis.report import build_report

    labels = record.group_dir(study, record.SEARCH) / "b1" / record.LABELS
    labels.write_text('{"labels": ["negative", "neu')  # a kill mid-write
    load_quietly(study)  # the table does not read labels.json: no warning there
    with pytest.warns(ResultWarning) as caught:
        page = build_report([study], tmp_path / "r").read_text()
    messages = [str(w.message) for w in caught]
    assert any(str(labels) in m and "truncated" in m for m in messages), messages
    assert html_escape(messages[0]) in section(page, "Problems found while loading")
    part = section(page, "Confusion matrices of the best trials")
    parser = Tables()
    parser.feed(part)
    first = parser.tables[0]  # still b1's, with class ids for names
    assert first[0][:4] == ["true \\ predicted", "0", "1", "2"]
    assert [row[1:4] for row in first[1:]] == [[str(c) for c in r] for r in TRIALS["b1"][12]]
    assert "Class names unknown" in part.split("<h3>")[1]
    # names of the wrong length: a warning too, ids again
    record.write_labels(labels.parent, ["negative", "positive"], {})
    data = load_quietly(study)
    found: list[str] = []
    with pytest.warns(ResultWarning, match="2 classes for a 3 x 3"):
        infos = confusion_infos(data.trials, data.studies, found, k=1)
    assert infos[0].names == ["0", "1", "2"] and not infos[0].named and len(found) == 1


def html_escape(text: str) -> str:
    from markupsafe import escape  # the report template's own escaping

    return str(escape(text))


def test_the_summary_picks_by_accuracy_and_names_the_untrained_base(study, capsys):
    from analysis.summary import print_summary

    print_summary(study, ["accuracy", "peak_mem_mb"], num_samples=5)
    out = capsys.readouterr().out
    assert "best accuracy: 0.9  [search/b1] model-b lora r4" in out
    pareto = out.split("Pareto set (accuracy vs peak_mem_mb")[1]
    assert "test_accuracy" in pareto and "base (untrained head)" in pareto
    assert "[search/a1]" not in pareto and "[search/b2]" in pareto
    assert "4b fp4" in pareto  # b2: its scheme shows (the report's label: selection.label)


def test_the_summary_reads_through_the_loader_and_prints_its_warnings(study, capsys):
    """A damaged trial is named in the summary as in the report (issue 36): the summary reads
    the study with analysis.load, not trial directories of its own."""
    from analysis.summary import collect, print_summary

    metrics = record.group_dir(study, record.SEARCH) / "a2" / record.METRICS
    metrics.write_text('{"step": 150, "accur')  # a kill mid-write
    found: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultWarning)  # passed on, not raised again
        rows = collect(study, found)
    assert len(rows) == len(TRIALS) and len(found) == 1 and str(metrics) in found[0]
    assert {r["trial"]: r["metrics"] for r in rows}["a2"] == {}  # kept, without its metrics
    print_summary(study, ["accuracy", "peak_mem_mb"], num_samples=5)
    out = capsys.readouterr().out
    problems = out.split("problems found while loading (1):")[1]
    assert f"    {found[0]}" in problems.splitlines()[1]
