"""Find target modules by name, wrap them in LoRALinear, freeze everything else.

    result = inject_lora(model, "all-linear", rank=8, alpha=16)   # or a LoraSpec(rank=8, alpha=16)
    print(result.trainable, "of", result.total, "parameters train")

Targets are module names (exact, or a dotted suffix: ``q_proj`` matches
``model.layers.0.self_attn.q_proj``), one regex string (full match on the qualified name), or a
shorthand mapped per architecture family. The output head (a causal LM's ``lm_head``, a
classifier's ``score`` or ``classifier``) is never a target.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from torch import nn

from lora_impl import variants
from lora_impl.layer import LoRALinear, LoraSpec, is_linear_like, lora_layers

SHORTHANDS = ("qv", "qkv", "qkvo", "attention", "mlp", "all-linear")

# Module-name suffixes per architecture family. GPT-2, GPT-NeoX and Phi-3 fuse q, k and v into
# one projection, so their `qv` and `qkv` are both that fused layer.
_FAMILIES: dict[str, dict[str, list[str]]] = {
    "llama": {
        "qv": ["q_proj", "v_proj"],
        "qkv": ["q_proj", "k_proj", "v_proj"],
        "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "mlp": ["gate_proj", "up_proj", "down_proj"],
    },
    "gpt2": {
        "qv": ["c_attn"],
        "qkv": ["c_attn"],
        "qkvo": ["c_attn", "attn.c_proj"],
        "mlp": ["c_fc", "mlp.c_proj"],
    },
    "gpt_neox": {
        "qv": ["query_key_value"],
        "qkv": ["query_key_value"],
        "qkvo": ["query_key_value", "attention.dense"],
        "mlp": ["dense_h_to_4h", "dense_4h_to_h"],
    },
    "phi3": {
        "qv": ["qkv_proj"],
        "qkv": ["qkv_proj"],
        "qkvo": ["qkv_proj", "o_proj"],
        "mlp": ["gate_up_proj", "down_proj"],
    },
}
# The head a sequence classifier adds (transformers' classes; PEFT's SEQ_CLS_HEAD_NAMES).
CLASSIFIER_HEADS = ("score", "classifier")
for _family in _FAMILIES.values():
    _family["attention"] = _family["qkvo"]
    _family["all-linear"] = _family["qkvo"] + _family["mlp"]

MODEL_TYPE_FAMILY = {
    "llama": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "mistral": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "olmo": "llama",
    "smollm3": "llama",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "phi3": "phi3",
}
# A module name that identifies the family of a model without a config.
_FAMILY_MARKERS = {"q_proj": "llama", "c_attn": "gpt2", "query_key_value": "gpt_neox",
                   "qkv_proj": "phi3"}


@dataclass(frozen=True)
class InjectResult:
    """What :func:`inject_lora` did: the replaced module names and parameter counts."""

    replaced: tuple[str, ...]
    trainable: int
    total: int


def model_family(model: nn.Module) -> str | None:
    """The target family ('llama', 'gpt2', 'gpt_neox') of a model, or None if unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in MODEL_TYPE_FAMILY:
        return MODEL_TYPE_FAMILY[model_type]
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for marker, family in _FAMILY_MARKERS.items():
        if marker in leaves:
            return family
    return None


def linear_module_names(model: nn.Module) -> list[str]:
    """Qualified names of every linear-like module a LoRA may target (not the output head)."""
    heads = output_heads(model)
    names = []
    for name, module in model.named_modules():
        if (
            isinstance(module, LoRALinear)
            or is_linear_like(module)
            and all(module is not h for h in heads)
            and not _inside_lora(name)
        ):
            names.append(name)
    return names


def _inside_lora(name: str) -> bool:
    parts = name.split(".")
    return "base_layer" in parts or any(p.startswith("lora_") for p in parts)


def output_heads(model: nn.Module) -> list[nn.Module]:
    """The model's output heads: a causal LM's output embeddings, a classifier's head."""
    get_head = getattr(model, "get_output_embeddings", None)
    heads = [get_head() if callable(get_head) else None]
    heads += [getattr(model, name, None) for name in CLASSIFIER_HEADS]
    return [h for h in heads if isinstance(h, nn.Module)]


def describe_linear_modules(model: nn.Module) -> str:
    """A short listing of a model's linear module names, for error messages."""
    names = linear_module_names(model)
    leaves = list(dict.fromkeys(_short_name(n) for n in names))
    example = f" (e.g. {names[0]})" if names else ""
    return f"linear modules of this model: {', '.join(leaves) or 'none'}{example}"


def _short_name(name: str) -> str:
    parts = name.split(".")
    # keep `attn.c_proj` / `mlp.c_proj` apart: a leaf alone is ambiguous there
    return ".".join(parts[-2:]) if parts[-1] in {"c_proj", "dense"} else parts[-1]


def expand_targets(model: nn.Module, targets: str | Sequence[str]) -> str | list[str]:
    """A shorthand -> its module-name suffixes for this model's family; anything else unchanged."""
    if isinstance(targets, str) and targets in SHORTHANDS:
        family = model_family(model)
        if family is not None:
            return list(_FAMILIES[family][targets])
        if targets == "all-linear":
            return linear_module_names(model)
        raise ValueError(
            f"target shorthand {targets!r} is defined for model types "
            f"{', '.join(sorted(MODEL_TYPE_FAMILY))}; name the modules instead. "
            + describe_linear_modules(model)
        )
    return targets


def resolve_targets(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Qualified names of the modules ``targets`` selects, checked to be linear and not the head.

    Raises:
        ValueError: a target matches nothing, matches a non-linear module or the output head;
            the message lists the model's linear module names.
    """
    expanded = expand_targets(model, targets)
    modules = dict(model.named_modules())
    heads = output_heads(model)
    if isinstance(expanded, str):
        try:
            pattern = re.compile(expanded)
        except re.error as err:
            raise ValueError(f"target regex {expanded!r} does not compile: {err}") from None
        groups = {expanded: [n for n in modules if n and pattern.fullmatch(n)]}
    elif isinstance(expanded, Sequence) and expanded and all(isinstance(t, str) for t in expanded):
        groups = {t: [n for n in modules if n == t or n.endswith("." + t)] for t in expanded}
    else:
        raise ValueError(
            f"targets must be a shorthand ({', '.join(SHORTHANDS)}), a regex string or a "
            f"non-empty list of module names, got {targets!r}"
        )
    selected: list[str] = []
    for target, names in groups.items():
        names = [n for n in names if not _inside_lora(n)]
        if not names:
            hint = ""
            if isinstance(expanded, str) and any(n.endswith("." + target) for n in modules):
                hint = (
                    f" (a string is a regex over full module names, as in PEFT; for module "
                    f"names pass a list: [{target!r}])"
                )
            raise ValueError(
                f"target {target!r} matches no module{hint}; {describe_linear_modules(model)}"
            )
        for name in names:
            module = modules[name]
            if any(module is h for h in heads):
                raise ValueError(
                    f"target {target!r} matches the output head {name!r}, which is never a "
                    f"LoRA target; {describe_linear_modules(model)}"
                )
            if isinstance(module, LoRALinear):
                raise ValueError(f"module {name!r} already has a LoRA adapter")
            if not is_linear_like(module):
                raise ValueError(
                    f"target {target!r} matches {name!r}, a {type(module).__name__}, not a "
                    f"linear layer; {describe_linear_modules(model)}"
                )
            if name not in selected:
                selected.append(name)
    return selected


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a packed 4-bit weight counts its unpacked values."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if type(param).__name__ == "Params4bit":
            n *= 2 * param.element_size()  # two 4-bit values per byte of storage
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def inject_lora(
    model: nn.Module,
    targets: str | Sequence[str],
    spec: LoraSpec | None = None,
    **kwargs: object,
) -> InjectResult:
    """Wrap every target in a LoRALinear in place and freeze all but the ``lora_`` parameters.

    The adapter is described by ``spec``, or by LoraSpec's fields as keywords (``rank=8,
    alpha=16.0, dropout=0.0, rslora=False, init="kaiming", dtype=torch.float32`` by default).
    The spec is built and targets resolved before the model is touched, so a bad call leaves
    it unchanged.

    Raises:
        TypeError: both a spec and keywords, a keyword that is no LoraSpec field, or a spec
            that is not a LoraSpec.
        ValueError: a bad rank / alpha / dropout / rslora / init / dtype (see LoraSpec), or a
            target problem (see resolve_targets).
    """
    spec = _spec_of(spec, kwargs)
    layer_class = variants.layer_class(spec.variant)  # a user's class, imported (ValueError)
    names = resolve_targets(model, targets)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, layer_class(getattr(parent, child), spec))
    for param_name, param in model.named_parameters():
        param.requires_grad_("lora_" in param_name)
    trainable, total = count_parameters(model)
    return InjectResult(replaced=tuple(names), trainable=trainable, total=total)


_SPEC_FIELDS = tuple(f.name for f in fields(LoraSpec))
_DEFAULT_SPEC_KWARGS = {"rank": 8, "alpha": 16.0}  # the fields LoraSpec itself has no default for


def _spec_of(spec: LoraSpec | None, kwargs: dict[str, object]) -> LoraSpec:
    if spec is not None:
        if kwargs:
            raise TypeError(
                f"inject_lora takes a LoraSpec or keywords, not both (got a spec and "
                f"{', '.join(kwargs)})"
            )
        if not isinstance(spec, LoraSpec):
            raise TypeError(
                f"inject_lora's third argument must be a LoraSpec, got {spec!r}; give "
                f"{', '.join(_SPEC_FIELDS)} as keywords"
            )
        return spec
    unknown = [k for k in kwargs if k not in _SPEC_FIELDS]
    if unknown:
        raise TypeError(
            f"inject_lora got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"LoraSpec fields are {', '.join(_SPEC_FIELDS)}"
        )
    return LoraSpec(**(_DEFAULT_SPEC_KWARGS | kwargs))


def compact_targets(model: nn.Module) -> list[str]:
    """Shortest name suffixes that select exactly the model's LoRA layers (for adapter_config).

    PEFT matches ``target_modules`` entries as exact names or dotted suffixes, as we do, so a
    saved list re-selects the same modules in either library.
    """
    adapted = [name for name, _ in lora_layers(model)]
    others = [n for n in linear_module_names(model) if n not in set(adapted)]
    chosen: list[str] = []
    for name in adapted:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if not any(o == suffix or o.endswith("." + suffix) for o in others):
                break
        if suffix not in chosen:
            chosen.append(suffix)
    return chosen
