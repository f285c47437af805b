"""Output paths checked before any work: every command that writes says in one line when it
cannot, instead of failing with a traceback after minutes of training.

    check_output_dir(args.out, "--out")                  # ValueError naming the path and why
    check_output_dir(target, "OUT", must_be_empty=True)  # an export never mixes with old files
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_output_dir(path: str | os.PathLike, flag: str, must_be_empty: bool = False) -> None:
    """ValueError (one line, naming ``flag``) unless ``path`` is, or can be made, a directory
    this process can write in. Nothing is left behind: the check makes and removes a temporary
    directory in the nearest existing parent (the only test that is true for root, read-only
    mounts and pseudo file systems such as /proc alike)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a directory")
    if must_be_empty and path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{flag} {path} exists and is not empty; give a new directory")
    probe = path.absolute()
    while not probe.exists():
        if probe.is_symlink():
            raise ValueError(f"{flag} {path} is not writable: {probe} is a broken link")
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {path} is not writable: {probe} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=probe))
    except OSError as err:
        raise ValueError(
            f"{flag} {path} is not writable ({probe}: {err.strerror or type(err).__name__})"
        ) from None
