"""HTML tables of the report: any trial table, and a classify trial's confusion matrix.

    html_table(trials, ["study", "trial", "eval_loss"], left=("study", "trial"))
    confusion_html(info)            # an analysis.classify.ConfusionInfo as a table

Cells are escaped (a generation or a class name with markup in it shows as text); numbers have
4 significant digits and a missing value is "-".
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from analysis.classify import ConfusionInfo
from study import record


def cell(value) -> str:
    """One value as table text: 4 significant digits, "-" for missing, escaped."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def html_table(
    rows: pd.DataFrame, columns: list[str], left: tuple[str, ...] = (), wrap: bool = False
) -> str:
    """An HTML table of ``columns`` (text columns in ``left`` are left-aligned)."""
    cls = {c: ' class="l"' if c in left else "" for c in columns}
    head = "".join(f"<th{cls[c]}>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td{cls[c]}>{cell(r[c])}</td>" for c in columns) + "</tr>"
        for _, r in rows.iterrows()
    )
    table = "<table class='wrap'>" if wrap else "<table>"
    return f"<div class='scroll'>{table}<tr>{head}</tr>{body}</table></div>"


def _count(value: float) -> str:
    return cell(int(value) if float(value).is_integer() else float(value))


def confusion_html(info: ConfusionInfo) -> str:
    """The trial's heading and its confusion matrix: a row per true class, a column per
    predicted class (class names as headers, the diagonal marked), then the class's test F1
    and its number of training examples."""
    title = (
        f"{info.study}/{info.group}/{info.trial}: {info.description} "
        f"({info.metric} {info.value:.4g})"
    )
    names = [html.escape(n) for n in info.names]
    head = (
        "<tr><th class='l'>true \\ predicted</th>"
        + "".join(f"<th>{n}</th>" for n in names)
        + "<th>test F1</th><th>train examples</th></tr>"
    )
    body = []
    diag = " class='diag'"  # the correctly classified counts
    for i, name in enumerate(names):
        cells = "".join(
            f"<td{diag if i == j else ''}>{_count(v)}</td>" for j, v in enumerate(info.matrix[i])
        )
        f1, train = info.f1[i], info.train_counts[i]
        body.append(
            f"<tr><th class='l'>{name}</th>{cells}<td>{cell(float(f1))}</td>"
            f"<td>{'-' if np.isnan(train) else _count(train)}</td></tr>"
        )
    note = "" if info.named else (
        f"<p class='warn'>Class names unknown (no readable {record.LABELS}): class ids in the "
        "matrix's order.</p>"
    )
    return (
        f"<h3>{html.escape(title)}</h3>{note}<div class='scroll'><table class='confusion'>"
        f"{head}{''.join(body)}</table></div>"
    )
