"""TrialConfig's fields as one flat table (dotted key, type, default, help), and their flags.

    for f in config_fields():
        print(f.key, f.default, f.help)          # lora.rank 8 Adapter rank r: ...
    add_config_flags(parser)                      # --lora.rank, --train.lr, ... (+ short aliases)
    TrialConfig.from_dict(given_flags(args))      # the flags a user gave, as dotted keys

A field is defined once, in its section in ``study.sections``, with its docstring; its flag,
its help text and its place in a search space follow from that definition. The help is the
attribute docstring (read from the source once, since Python drops attribute docstrings at run
time) or, for a field made without source, ``field(metadata={"help": ...})``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any

from study.config import TrialConfig, field_types, is_section

# Short flags kept from before the flags were generated; each names the field it sets.
ALIASES = {
    "model.name": ["--model"],
    "data.task": ["--task"],
    "data.source": ["--source"],
    "data.size": ["--size"],
    "data.seq_len": ["--seq-len"],
    "lora.rank": ["--rank"],
    "lora.alpha": ["--alpha"],
    "lora.alpha_ratio": ["--alpha-ratio"],
    "lora.dropout": ["--dropout"],
    "lora.targets": ["--targets"],
    "lora.rslora": ["--rslora"],
    "quant.bits": ["--bits"],
    "quant.type": ["--quant-type"],
    "quant.scheme": ["--scheme"],
    "train.steps": ["--steps"],
    "train.epochs": ["--epochs"],
    "train.lr": ["--lr"],
    "train.batch_size": ["--batch-size"],
    "train.grad_accum": ["--grad-accum"],
    "train.warmup": ["--warmup"],
    "train.dtype": ["--dtype"],
    "train.grad_checkpointing": ["--grad-checkpointing"],
    "eval.every": ["--eval-every"],
}
_NONE = ("none", "null")
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class ConfigField:
    """One leaf of TrialConfig: ``key`` is dotted (``lora.rank``), ``kind`` its scalar type."""

    key: str
    kind: type
    optional: bool
    default: Any
    help: str

    def parse(self, text: str) -> Any:
        """A command-line string as this field's value (ValueError naming the field)."""
        if self.optional and text.strip().lower() in _NONE:
            return None
        if self.kind is bool:
            word = text.strip().lower()
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise ValueError(f"{self.key} must be true or false, got {text!r}")
        try:
            return self.kind(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(self.kind, self.kind.__name__)
            raise ValueError(f"{self.key} must be {kind}, got {text!r}") from None


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the first line of its attribute docstring, for ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # a built-in or a class made without source
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def scalar(hint: Any) -> tuple[type, bool]:
    """(scalar type, whether None is allowed) of an annotation such as ``int | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def config_fields(cls: type = TrialConfig, prefix: str = "") -> list[ConfigField]:
    """Every leaf field of ``cls`` (sections flattened), in definition order."""
    hints = field_types(cls)
    docs = attribute_docs(cls)
    out: list[ConfigField] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if is_section(hint):
            out += config_fields(hint, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind, optional = scalar(hint)
        text = f.metadata.get("help") or docs.get(f.name, "")
        out.append(ConfigField(f"{prefix}{f.name}", kind, optional, default, text))
    return out


def _argparse_type(cf: ConfigField):
    def convert(text: str) -> Any:
        return cf.parse(text)  # a ValueError becomes argparse's "invalid int value: 'x'"

    convert.__name__ = cf.kind.__name__
    return convert


def add_config_flags(parser: argparse.ArgumentParser, cls: type = TrialConfig) -> None:
    """A flag per field (``--lora.rank``) and per alias (``--rank``); only given ones are set."""
    group = parser.add_argument_group(
        "trial config (every TrialConfig field; --KEY none clears an optional one)"
    )
    for cf in config_fields(cls):
        kwargs: dict[str, Any] = {
            "dest": cf.key,
            "type": _argparse_type(cf),
            "default": argparse.SUPPRESS,
            "metavar": cf.kind.__name__.upper(),
            **({"nargs": "?", "const": True} if cf.kind is bool else {}),
        }
        # argparse formats help with %: a docstring's "5%" would break --help
        text = f"{cf.help or cf.key} (default {cf.default})".replace("%", "%%")
        group.add_argument(f"--{cf.key}", help=text, **kwargs)
        for alias in ALIASES.get(cf.key, []):  # its own action: errors name the flag typed
            group.add_argument(alias, help=f"same as --{cf.key}", **kwargs)


def given_flags(args: argparse.Namespace, cls: type = TrialConfig) -> dict[str, Any]:
    """The config flags present in ``args``, as a dotted mapping."""
    present = vars(args)
    return {cf.key: present[cf.key] for cf in config_fields(cls) if cf.key in present}
