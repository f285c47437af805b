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
