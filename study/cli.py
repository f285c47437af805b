"""Command-line helpers shared by the study's entry points."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits with code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")

    @classmethod
    def for_module(cls, prog: str, doc: str | None) -> OneLineParser:
        """A parser whose help is the module docstring, kept as written."""
        return cls(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as torch's default uses)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> None:
    """ValueError unless ``threads`` is unset or 1..the usable cores (more only oversubscribes
    the machine; 0 or less has no meaning)."""
    cores = usable_cores()
    if threads is not None and not 1 <= threads <= cores:
        raise ValueError(f"--threads must be between 1 and the {cores} usable cores, got {threads}")
