"""The report's page: its template, its figures (embedded) and its atomic move into place.

    sections = [section("answer", "The answer", sentences=[...], notes=[...]), ...]
    html = render_page(title, count, sections)   # analysis/templates/report.html.j2
    path = publish(out, lambda tmp: ...)         # written in tmp, moved into place when done

Python builds the page's content as values (a :class:`Section` per heading: its kind and its
data, tables as :class:`analysis.tables.Table`, figures as :class:`Figure`); the jinja2
template holds every tag and word of prose and escapes every value (autoescape): a trial label
or a generation with markup in it shows as text.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jinja2

from analysis import render
from study.metrics import number
from study.outdir import check_output_dir

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"


class Section(NamedTuple):
    """One heading of the page: ``kind`` names the template's macro that draws ``data``."""

    kind: str
    heading: str
    data: dict


def section(kind: str, heading: str, **data) -> Section:
    """A :class:`Section` (``data`` as keywords)."""
    return Section(kind, heading, data)


class Figure(NamedTuple):
    """A figure as the page embeds it: its PNG in base64, its caption and its files' stem."""

    name: str
    caption: str
    png_base64: str


class Figures:
    """Saves figures under ``out/figures`` (PNG and SVG) and keeps them for the page."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def add(self, fig, name: str, caption: str) -> Figure:
        """Save ``fig`` as ``figures/<name>.png`` and ``.svg``; return it as the page shows it."""
        png, svg = render.save(fig, self.dir / name)
        self.files += [png, svg]
        return Figure(name, caption, base64.b64encode(png.read_bytes()).decode("ascii"))


@functools.cache  # one loader and one template cache per process
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is text: a label or a generation cannot inject markup
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the build, not the page
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = number
    return env


def render_page(title: str, count: int, sections: list[Section]) -> str:
    """The whole HTML document: the title, when and from how many runs, then the sections."""
    template = _environment().get_template(TEMPLATE)
    built = time.strftime("%Y-%m-%d %H:%M:%S")
    return template.render(title=title, count=count, built=built, sections=sections)


REPORT_FILES = frozenset({"report.html", "trials.csv", "curves.csv", "figures", "stats"})


def publish(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` in a temporary directory beside ``out`` and move it into place when
    complete (replacing an earlier report there): a failure or a kill never leaves half a
    report, and never touches files that are not a report's. Returns ``out/report.html``.

    Raises:
        ValueError: an ``out`` that cannot be written or holds other files.
    """
    out = Path(out)
    check_output_dir(out, "--out")
    if out.is_dir() and not {p.name for p in out.iterdir()} <= REPORT_FILES:
        raise ValueError(f"--out {out} holds files that are not a report's; give a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "report")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was moved into place
    return out / "report.html"
