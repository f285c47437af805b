"""Regional compilation: a training view of a model whose repeated blocks run compiled.

    view = compiled_view(model)      # same parameters; its decoder layers wrapped by torch.compile
    loss = batch_loss(view, batch)   # the training step's forward through the compiled blocks

Compiling a whole causal LM traces and compiles every decoder layer again: on 2 CPU cores the
bundled 30-layer model took 302 s. Its layers are one class with one ``forward``, so compiling
each layer on its own lets torch reuse the first layer's compiled code for the others (PyTorch's
"regional compilation" recipe; accelerate's ``compile_regions`` builds the same kind of view):
the compile costs about one layer's, whatever the depth.

The view is a shallow copy of the module tree down to the repeated blocks: the containers are new
objects, the blocks and every parameter and buffer are the model's own, so the optimizer, the
checkpoint and evaluation (which keeps calling ``model``, eager: generation's KV cache would
only recompile) see one set of weights. Only the training loss calls the view.
"""

from __future__ import annotations

import copy
from types import MethodType

import torch
from torch import nn


def repeated_blocks(module: nn.Module) -> bool:
    """Whether ``module`` is a ModuleList of one class (a model's decoder layers)."""
    return (isinstance(module, nn.ModuleList) and len(module) > 0
            and all(type(m) is type(module[0]) for m in module))


def block_count(model: nn.Module) -> int:
    """How many modules ``compiled_view`` compiles (0: the model has no repeated blocks)."""
    return sum(len(m) for m in model.modules() if repeated_blocks(m))


def compiled_view(model: nn.Module, **compile_kwargs) -> nn.Module:
    """``model`` with each module of its repeated blocks wrapped by ``torch.compile`` (the
    kwargs), sharing its parameters, buffers and blocks; ``model`` itself is unchanged.

    Raises:
        ValueError: the model has no repeated blocks (nothing to compile regionally).
    """
    if not block_count(model):
        raise ValueError(f"{type(model).__name__} has no repeated blocks to compile")
    return _view(model, compile_kwargs)


def _view(module: nn.Module, compile_kwargs: dict) -> nn.Module:
    if repeated_blocks(module):
        return nn.ModuleList(torch.compile(block, **compile_kwargs) for block in module)
    if not any(repeated_blocks(m) for m in module.modules()):
        return module  # no block below: the module itself, eager and shared
    new = copy.copy(module)  # a new container: the same parameter and buffer dicts
    # methods bound to the original (set as attributes) would run on it, not on the view
    for name, value in vars(module).items():
        if isinstance(value, MethodType) and value.__self__ is module:
            setattr(new, name, MethodType(value.__func__, new))
    new._modules = {name: _view(child, compile_kwargs) if child is not None else None
                    for name, child in module._modules.items()}
    return new
