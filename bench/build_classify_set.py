"""Build the built-in offline text-classification set from the standard library's docstrings.

Each row is the cleaned opening of one docstring (a module, class, function or method) from
CPython's standard library, labelled by the area of the module that defines it: ``text``,
``networking``, ``file_formats``, ``concurrency``, ``math`` or ``files_os`` (``AREAS`` names the
modules of each). The classes are balanced and the rows shuffled with fixed seeds, and the gzip
header carries no time stamp, so one Python version on one platform always writes the same bytes.

Rebuild (the shipped file was built with CPython 3.11; see ``study/trial/tasks/data/README.md``)::

    python -m bench.build_classify_set [--out study/trial/tasks/data/stdlib_docs.csv.gz]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import inspect
import io
import pkgutil
import platform
import random
import re
import types
import warnings
from collections import Counter, defaultdict
from pathlib import Path

DEFAULT_OUT = Path("study/trial/tasks/data/stdlib_docs.csv.gz")

# A package name takes its submodules too. C accelerators (``_csv``, ``_io``, ...) are named
# because their classes report the accelerator as ``__module__``, not the public module.
# Modules deprecated by PEP 594 (asyncore, nntplib, cgi, ...) are left out: they are gone in 3.13.
# fmt: off
AREAS = {
    "text": [
        "string", "re", "textwrap", "difflib", "unicodedata", "codecs", "_codecs", "encodings",
        "html", "_markupbase", "stringprep", "locale", "gettext", "shlex", "pprint", "reprlib",
        "tokenize", "keyword", "readline", "base64", "binascii", "quopri",
    ],
    "networking": [
        "socket", "_socket", "ssl", "_ssl", "http", "urllib", "email", "smtplib", "ftplib",
        "imaplib", "poplib", "xmlrpc", "socketserver", "ipaddress", "mailbox", "wsgiref",
        "mimetypes", "webbrowser",
    ],
    "file_formats": [
        "csv", "_csv", "json", "_json", "configparser", "tomllib", "plistlib", "zipfile",
        "tarfile", "gzip", "bz2", "_bz2", "lzma", "_lzma", "zlib", "pickle", "_pickle",
        "pickletools", "shelve", "sqlite3", "_sqlite3", "dbm", "xml", "pyexpat", "_elementtree",
        "netrc", "struct", "_struct", "wave",
    ],
    "concurrency": [
        "threading", "_thread", "multiprocessing", "_multiprocessing", "concurrent", "asyncio",
        "_asyncio", "queue", "_queue", "subprocess", "sched", "selectors", "select", "signal",
        "contextvars",
    ],
    "math": [
        "math", "cmath", "decimal", "_decimal", "_pydecimal", "fractions", "statistics",
        "random", "_random", "numbers",
    ],
    "files_os": [
        "os", "posix", "posixpath", "pathlib", "shutil", "glob", "fnmatch", "tempfile",
        "filecmp", "stat", "io", "_io", "_pyio", "fileinput", "linecache", "fcntl", "mmap",
        "pwd", "grp", "getpass",
    ],
}
# The text and number types live in ``builtins``, which spans every area: only these are taken.
TYPES = {"text": (str, bytes, bytearray), "math": (int, float, complex)}
# Never imported, even as a submodule: they act on import, open windows, or are test suites.
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests",
        "lib2to3", "pydoc_data", "ensurepip", "venv", "__phello__", "__main__", "rlcompleter"}
# fmt: on
MIN_CHARS, MAX_CHARS, MAX_SENTENCES, MIN_TOTAL = 35, 300, 3, 2000
# "name(args) -> result" or "data [,options] -> result": the call line of older C docstrings.
SIGNATURE = re.compile(r"^([\w.]+\(|[\w\s\[\],.]*\s-+>\s)")
# A paragraph that is code, a field list or an author line is not prose about the object.
NOT_PROSE = re.compile(r"^(\s|[^\n]*:\n|[^\n]*:$|Written by|Copyright|\(c\))")


def walk(name: str):
    """The module ``name`` and, for a package, all its importable submodules, sorted."""
    if any(part in SKIP or part.startswith("turtle") for part in name.split(".")):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(name)
    except Exception:  # missing C extension, platform-only module: skipped silently
        return
    yield mod
    for info in sorted(pkgutil.iter_modules(getattr(mod, "__path__", [])), key=lambda i: i.name):
        yield from walk(f"{name}.{info.name}")


def docstrings(obj, owners: set[str], depth: int = 0):
    """Docstrings of a module or class and of the classes, functions and methods it defines."""
    yield obj.__doc__
    for key, value in sorted(vars(obj).items(), key=lambda item: item[0]):
        if isinstance(value, types.WrapperDescriptorType) or key in ("__dict__", "__weakref__"):
            continue  # slot wrappers: "Return self+value." and the like
        member = getattr(value, "__func__", value)  # classmethod, staticmethod
        is_class = inspect.isclass(member)
        # A property answers for its getter's module; a C method (no __module__) is defined here.
        getter = getattr(member, "fget", None) or getattr(member, "func", member)
        if getattr(member if is_class else getter, "__module__", None) not in (*owners, None):
            continue  # imported or re-exported: it belongs to another module
        if is_class and depth < 2 and member is not obj:
            yield from docstrings(member, owners, depth + 1)
        elif not is_class and (inspect.isroutine(member) or inspect.isdatadescriptor(member)):
            yield member.__doc__


def clean(doc) -> str | None:
    """The first paragraph (at most 3 sentences, ~300 characters) on one line, or None."""
    if not isinstance(doc, str):
        return None
    paras = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    if paras and SIGNATURE.match(paras[0]):
        paras = paras[1:]  # a call signature says nothing about the area in words
    text = ""
    for para in paras[:2]:  # "Return the absolute value of x." is short: the next one helps
        prose = re.split(r"^\s*>>>", para, flags=re.MULTILINE)[0]  # a doctest ends the prose
        if not prose.strip() or NOT_PROSE.match(prose):
            break
        text = f"{text} {' '.join(prose.split())}".strip()
        if len(text) >= MIN_CHARS or prose != para:
            break
    text = " ".join(re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)[:MAX_SENTENCES])
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0].rstrip(",;:")
    return text if len(text) >= MIN_CHARS else None


def names_module(text: str, modnames: set[str]) -> bool:
    """Whether the text names a part of the module's dotted names (the area would leak)."""
    # "_pydecimal" is decimal and "_pyio" is io; "_socket" is socket.
    parts = {re.sub(r"^_(py)?", "", p) for m in modnames for p in m.split(".")} - {""}
    return any(re.search(rf"\b{re.escape(p)}\b", text, re.IGNORECASE) for p in parts)


def sources(label: str):
    """(docstrings, module names) pairs of one area: its modules, then its builtin types."""
    for root in AREAS[label]:
        for mod in walk(root):
            names = {mod.__name__, mod.__spec__.name}  # _pydecimal calls itself "decimal"
            yield docstrings(mod, names), names
    for cls in TYPES.get(label, ()):
        yield docstrings(cls, {"builtins"}, 1), {"builtins"}


def collect() -> dict[str, set[str]]:
    by_label: dict[str, set[str]] = defaultdict(set)
    for label in AREAS:
        for docs, names in sources(label):
            for doc in docs:
                text = clean(doc)
                if text and not names_module(text, names):
                    by_label[label].add(text)
    # A text under two labels says nothing about either: drop it from both.
    owners = Counter(t for texts in by_label.values() for t in texts)
    return {lab: {t for t in texts if owners[t] == 1} for lab, texts in by_label.items()}


def build(out: Path) -> Counter:
    by_label = collect()
    print("distinct texts per class:", {lab: len(texts) for lab, texts in by_label.items()})
    n = min(len(texts) for texts in by_label.values())
    if n * len(AREAS) < MIN_TOTAL:
        raise SystemExit(f"only {n} texts in the smallest class: under {MIN_TOTAL} in all")
    rng = random.Random(0)
    rows = [(t, lab) for lab in AREAS for t in rng.sample(sorted(by_label[lab]), n)]
    rng.shuffle(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 and no file name in the gzip header: the bytes depend on the rows only.
    with open(out, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        writer = csv.writer(text, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
        text.flush()
        text.detach()
    return Counter(lab for _, lab in rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    counts = build(args.out)
    for label, count in counts.items():
        print(f"{label:>14}: {count}")
    print(f"{'total':>14}: {sum(counts.values())} -> {args.out} ({args.out.stat().st_size} bytes)")
    print(f"python {platform.python_version()} ({platform.python_implementation()})")


if __name__ == "__main__":
    main()
