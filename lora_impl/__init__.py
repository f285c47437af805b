"""A from-scratch LoRA that matches PEFT: plain and bitsandbytes bases, merge, PEFT file format.

from lora_impl import LoraSpec, inject_lora, merge, save_adapter
spec = LoraSpec(rank=8, alpha=16)                      # validated here: a bad field is a ValueError
result = inject_lora(model, "qv", spec)                # freezes all but lora_* parameters
# inject_lora(model, "qv", rank=8, alpha=16) builds the same spec from keywords
...train...
save_adapter(model, "out/adapter")                      # loads in peft.PeftModel too
"""

from __future__ import annotations

from lora_impl.inject import (
    SHORTHANDS,
    InjectResult,
    count_parameters,
    inject_lora,
    linear_module_names,
    model_family,
    resolve_targets,
)
from lora_impl.io import (
    adapter_weights_file,
    has_adapter,
    load_adapter,
    load_adapter_weights,
    save_adapter,
    spec_from_peft_config,
)
from lora_impl.layer import LoRALinear, LoraSpec, disable_adapters, lora_layers
from lora_impl.merge import merge, unload, unmerge

__all__ = [
    "SHORTHANDS",
    "InjectResult",
    "LoRALinear",
    "LoraSpec",
    "adapter_weights_file",
    "count_parameters",
    "disable_adapters",
    "has_adapter",
    "inject_lora",
    "linear_module_names",
    "load_adapter",
    "load_adapter_weights",
    "lora_layers",
    "merge",
    "model_family",
    "resolve_targets",
    "save_adapter",
    "spec_from_peft_config",
    "unload",
    "unmerge",
]
