"""A from-scratch LoRA that matches PEFT: plain and bitsandbytes bases, merge, PEFT file format.

from lora_impl import inject_lora, merge, save_adapter
result = inject_lora(model, "qv", rank=8, alpha=16)   # freezes all but lora_* parameters
...train...
save_adapter(model, "out/adapter")                      # loads in peft.PeftModel too
"""

from lora_impl.inject import (
    SHORTHANDS,
    InjectResult,
    count_parameters,
    inject_lora,
    linear_module_names,
    model_family,
    resolve_targets,
)
from lora_impl.io import load_adapter, save_adapter
from lora_impl.layer import LoRALinear, disable_adapters, lora_layers
from lora_impl.merge import merge, unload, unmerge

__all__ = [
    "SHORTHANDS",
    "InjectResult",
    "LoRALinear",
    "count_parameters",
    "disable_adapters",
    "inject_lora",
    "linear_module_names",
    "load_adapter",
    "lora_layers",
    "merge",
    "model_family",
    "resolve_targets",
    "save_adapter",
    "unload",
    "unmerge",
]
