"""Files written whole or not at all, and JSON read with one-line errors: the record's I/O.

    atomic_write(path, text)         # a reader sees the old file or the new one, never half
    read_json(path)                  # RecordError: missing, unreadable, truncated, not JSON

``study.record`` owns which files a trial or study directory holds; this module only knows how
to write and read a file safely (no torch, no Ray).
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """A record file that is missing, unreadable, truncated or not valid JSON.

    ``str(err)`` is one line naming the file and the problem; ``problem`` is one of
    ``missing``, ``unreadable``, ``truncated``, ``not valid JSON``, ``not a JSON object``.
    """

    def __init__(self, path: Path, problem: str, detail: str = "") -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}" + (f" ({detail})" if detail else ""))


# --- writing --------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, fsync, rename.

    A reader (or a resume after a kill) sees the old file or the new one, never a torn one. The
    temporary name is this process's and thread's own, so two writers never share one; it is
    created with the usual permissions (0666 less the umask), as a plain ``open`` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (a crash of the machine, not only of the process)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync directories
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented JSON (non-JSON values as their str)."""
    atomic_write(path, json.dumps(data, indent=2, default=str))


# --- reading --------------------------------------------------------------------------------


def read_json(path: str | os.PathLike) -> Any:
    """Parsed JSON of ``path``.

    Raises:
        RecordError: missing, unreadable, truncated (a write cut short) or not valid JSON.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(path, "missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(path, "unreadable", type(err).__name__) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        cut = _cut_short(text, err)
        raise RecordError(
            path, "truncated" if cut else "not valid JSON", f"{err.msg}: char {err.pos}"
        ) from None


# What may remain of a number or a literal (true, false, null, NaN, -Infinity) cut mid-token.
_PARTIAL_TOKEN = re.compile(r"[-+0-9.eEtrufalsnNIiy]*")


def _cut_short(text: str, err: json.JSONDecodeError) -> bool:
    """Whether ``text`` reads as a valid JSON document cut short (a write that stopped), not as
    garbage: the parser stopped at the end, inside an unterminated string (which reports where
    the string starts), or inside a last number or literal (``0.``, ``tr``, ``1e-``)."""
    if err.msg.startswith("Unterminated string"):
        return True
    return _PARTIAL_TOKEN.fullmatch(text[err.pos :].rstrip()) is not None


def read_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise RecordError(path, "not a JSON object")
    return data


def read_jsonl(path: str | os.PathLike, valid=None) -> tuple[list[dict], list[int]]:
    """(the JSON objects of a JSON-lines file, numbers of the lines that are not one).

    A kill during a write can leave a half line at the end; such lines are reported, not
    raised, so the rest of the file still counts. A missing file is ``([], [])``.

    Raises:
        RecordError: the file exists but cannot be read (a directory, no permission).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return [], []
    except OSError as err:
        raise RecordError(path, "unreadable", type(err).__name__) from None
    points, bad = [], []
    for number, line in enumerate(text.split("\n"), 1):  # JSON escapes every other separator
        if not line.strip():
            continue
        try:
            point = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(point, dict) and (valid is None or valid(point)):
            points.append(point)
        else:
            bad.append(number)
    return points, bad
