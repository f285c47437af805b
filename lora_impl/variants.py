"""LoRA variants by name: the built-in ones and a user's own class, named as ``module:Class``.

    layer_class("dora")                         # lora_impl.dora.DoRALinear
    layer_class("mypkg.ortholora:OrthoLoRA")    # imported from the user's module

A variant is a subclass of :class:`lora_impl.LoRALinear`: it wraps the base layer (composition,
``self.base_layer``), keeps its trainable tensors in parameters named ``lora_*`` (only those
train and are saved), and either gives ``delta_weight()`` (what merging adds to the base
weight, in the base weight's layout) or sets ``mergeable = False`` (merging is then refused in
one line). ``docs/VARIANTS.md`` walks through writing one.
"""

from __future__ import annotations

import importlib

from lora_impl.layer import LoRALinear, check_variant

BUILTIN = {"lora": ("lora_impl.layer", "LoRALinear"), "dora": ("lora_impl.dora", "DoRALinear")}


def layer_class(name: str) -> type:
    """The LoRALinear subclass named ``name``.

    Raises:
        ValueError: a bad name, a module that cannot be imported, no such class, or a class that
            is not a LoRALinear subclass; one line naming what is missing.
    """
    problem = check_variant(name)
    if problem:
        raise ValueError(problem)
    module_name, cls_name = BUILTIN.get(name) or name.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's module's: say it
        raise ValueError(
            f"lora.variant {name!r}: cannot import {module_name} ({type(err).__name__}: "
            f"{err}); is its directory on PYTHONPATH?") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise ValueError(f"lora.variant {name!r}: {module_name} has no {cls_name}")
    if not (isinstance(cls, type) and issubclass(cls, LoRALinear)):
        raise ValueError(f"lora.variant {name!r}: {cls_name} is not a subclass of "
                         "lora_impl.LoRALinear (the variant interface, docs/VARIANTS.md)")
    return cls
