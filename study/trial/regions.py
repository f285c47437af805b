"""Regional compilation: a training view of a model whose repeated blocks run compiled.

    view = compiled_view(model)      # same parameters; its decoder layers wrapped by torch.compile
    loss = batch_loss(view, batch)   # the training step's forward through the compiled blocks

Compiling a whole causal LM traces and compiles every decoder layer again: on 2 CPU cores the
bundled 30-layer model took 302 s. Its layers are one class with one ``forward``, so compiling
each layer on its own lets torch reuse the first layer's compiled code for the others (PyTorch's
"regional compilation" recipe; accelerate's ``compile_regions`` builds the same kind of view):
the compile costs about one layer's, whatever the depth.

The view is a copy of the module tree down to the repeated blocks: the containers are new
objects, the blocks and every parameter and buffer are the model's own, so the optimizer, the
checkpoint and evaluation (which keeps calling ``model``, eager: generation's KV cache would
only recompile) see one set of weights. Only the training loss calls the view.
"""

from __future__ import annotations

import copy

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
    # a deep copy that copies only the containers above the blocks: everything else (every
    # module with no block below it, the blocks themselves, every parameter and buffer) is
    # given to it as already copied, i.e. shared; methods bound to a container are rebound
    shared: dict[int, object] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    for module in model.modules():
        if repeated_blocks(module):
            shared.update((id(block), block) for block in module)
        elif not any(repeated_blocks(m) for m in module.modules()):
            shared[id(module)] = module
    view = copy.deepcopy(model, shared)
    own = {id(m) for m in model.modules()}  # lists inside a block (experts) stay the model's
    for blocks in [m for m in view.modules() if repeated_blocks(m) and id(m) not in own]:
        for i, block in enumerate(blocks):
            blocks[i] = torch.compile(block, **compile_kwargs)
    return view
