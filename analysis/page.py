"""The report's page: its style, its figures (embedded) and its atomic move into place.

    html = page(title, count, body)
    path = publish(out, lambda tmp: ...)    # write the report in tmp; out is replaced when done
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from analysis import render
from study.outdir import check_output_dir

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
table.wrap td { white-space: pre-wrap; max-width: 36em; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.scroll { overflow-x: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
.grid figure { flex: 1 1 520px; max-width: 590px; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
.warn { color: #a15c00; }
ul.answer li { margin: 0.4em 0; line-height: 1.4; }
table.confusion td.diag { background: #e6f2e6; font-weight: bold; }
"""
class Figures:
    """Saves figures under ``out/figures`` and keeps their HTML (PNG embedded as base64)."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def add(self, fig, name: str, caption: str) -> str:
        """Save ``fig`` as ``figures/<name>.png`` and ``.svg``; return its HTML figure."""
        png, svg = render.save(fig, self.dir / name)
        self.files += [png, svg]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} (figures/{name}.png, .svg)</figcaption></figure>"
        )


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


def page(title: str, count: int, body: str) -> str:
    """The whole HTML document."""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Built {time.strftime('%Y-%m-%d %H:%M:%S')} from "
        f"{count} runs.</p>{body}</body></html>"
    )


