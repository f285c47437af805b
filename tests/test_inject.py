"""Target resolution (shorthands per architecture, names, regex, errors) and the spec argument."""

from __future__ import annotations

import pytest

from lora_impl import LoraSpec, inject_lora, lora_layers, resolve_targets
from study.sections import QuantConfig
from study.trial.models import load_model

LAYERS = (0, 1)


def names(pattern: str, leaves: list[str]) -> set[str]:
    return {pattern.format(i=i, leaf=leaf) for i in LAYERS for leaf in leaves}


LLAMA = "model.layers.{i}.{leaf}"
EXPECTED = {
    ("tiny-llama", "qv"): names(LLAMA, ["self_attn.q_proj", "self_attn.v_proj"]),
    ("tiny-qwen2", "qkvo"): names(LLAMA, [f"self_attn.{p}_proj" for p in "qkvo"]),
    ("tiny-llama", "mlp"): names(LLAMA, ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    ("tiny-qwen2", "all-linear"): names(
        LLAMA,
        [f"self_attn.{p}_proj" for p in "qkvo"] + ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    ),
    ("tiny-gpt2", "qv"): names("transformer.h.{i}.{leaf}", ["attn.c_attn"]),
    ("tiny-gpt2", "attention"): names("transformer.h.{i}.{leaf}", ["attn.c_attn", "attn.c_proj"]),
    ("tiny-gpt2", "mlp"): names("transformer.h.{i}.{leaf}", ["mlp.c_fc", "mlp.c_proj"]),
    ("tiny-neox", "qkvo"): names(
        "gpt_neox.layers.{i}.{leaf}", ["attention.query_key_value", "attention.dense"]
    ),
    ("tiny-neox", "all-linear"): names(
        "gpt_neox.layers.{i}.{leaf}",
        ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    ),
}


@pytest.mark.parametrize("model_name, shorthand", list(EXPECTED))
def test_shorthands_resolve_per_architecture(model_name, shorthand):
    model, _ = load_model(model_name)
    assert set(resolve_targets(model, shorthand)) == EXPECTED[model_name, shorthand]


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2", "tiny-qwen2", "tiny-neox"])
@pytest.mark.parametrize("bits", [16, 4])
def test_all_linear_never_includes_the_head(model_name, bits):
    model, _ = load_model(model_name, QuantConfig(bits=bits))
    targets = resolve_targets(model, "all-linear")
    assert targets and not any("lm_head" in t or "embed_out" in t for t in targets)


def test_names_and_regex():
    model, _ = load_model("tiny-llama")
    assert resolve_targets(model, ["layers.1.self_attn.q_proj"]) == [
        "model.layers.1.self_attn.q_proj"
    ]
    assert resolve_targets(model, r"model\.layers\.0\.mlp\.(up|down)_proj") == [
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
    ]


def test_unknown_target_names_the_real_modules():
    model, _ = load_model("tiny-llama")
    with pytest.raises(ValueError, match="c_attn") as err:
        inject_lora(model, ["c_attn"])
    assert "q_proj" in str(err.value) and "down_proj" in str(err.value)
    assert not list(lora_layers(model))
    with pytest.raises(ValueError, match=r"regex over full module names.*\['q_proj'\]"):
        inject_lora(model, "q_proj")  # a bare name as a string: PEFT's regex rule, with a hint
    assert inject_lora(model, r".*\.q_proj").replaced  # the same as a regex works


def test_output_head_and_non_linear_targets_are_refused():
    model, _ = load_model("tiny-llama")
    with pytest.raises(ValueError, match="output head"):
        inject_lora(model, ["lm_head"])
    with pytest.raises(ValueError, match="not a linear layer"):
        inject_lora(model, ["input_layernorm"])
    with pytest.raises(ValueError, match="does not compile"):
        inject_lora(model, "q_proj(")
    with pytest.raises(ValueError, match="targets must be"):
        inject_lora(model, [])
    assert not list(lora_layers(model))


def test_injecting_twice_is_refused():
    model, _ = load_model("tiny-llama")
    inject_lora(model, "qv")
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        inject_lora(model, "qv")


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_trainable_count_is_rank_times_in_plus_out(model_name):
    model, _ = load_model(model_name)
    rank = 8
    result = inject_lora(model, "qkvo", rank=rank, alpha=16)
    expected = sum(
        rank * (layer.in_features + layer.out_features) for _, layer in lora_layers(model)
    )
    assert result.trainable == expected
    assert result.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert result.total == sum(p.numel() for p in model.parameters())


def test_spec_and_keywords_together_are_a_type_error():
    model, _ = load_model("tiny-llama")
    spec = LoraSpec(rank=4, alpha=8)
    with pytest.raises(TypeError, match="not both"):
        inject_lora(model, "qv", spec, rank=4)
    with pytest.raises(TypeError, match="unexpected keyword.*ranks"):
        inject_lora(model, "qv", ranks=4)
    with pytest.raises(TypeError, match="must be a LoraSpec"):
        inject_lora(model, "qv", 4)  # the old positional rank
    assert not list(lora_layers(model)), "a failed inject must leave the model untouched"
    result = inject_lora(model, "qv", spec)
    assert result.replaced and all(layer.spec is spec for _, layer in lora_layers(model))
