"""Adapters saved in PEFT's format: our round trip and cross-loading with PEFT."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lora_impl import (
    LoraSpec,
    adapter_weights_file,
    has_adapter,
    inject_lora,
    load_adapter,
    lora_layers,
    save_adapter,
    spec_from_peft_config,
)
from lora_impl.inject import expand_targets
from study.trial.models import load_model
from tests.conftest import randomize_lora

peft = pytest.importorskip("peft")


def adapted(name="tiny-llama", targets="qkvo", **kw):
    model, _ = load_model(name)
    inject_lora(model, targets, rank=4, alpha=8, **kw)
    randomize_lora(model, seed=3)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "name, targets", [("tiny-llama", "qkvo"), ("tiny-gpt2", "all-linear"), ("tiny-neox", "mlp")]
)
def test_round_trip_gives_identical_logits(tmp_path, sample_ids, name, targets):
    model = adapted(name, targets, rslora=True)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["use_rslora"]
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert all(
        k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
        for k in keys
    )
    assert has_adapter(tmp_path) and adapter_weights_file(tmp_path).is_file()
    fresh, _ = load_model(name)
    load_adapter(fresh, tmp_path)
    assert torch.equal(logits(fresh, sample_ids), logits(model, sample_ids))
    assert {layer.spec for _, layer in lora_layers(fresh)} == {
        LoraSpec(rank=4, alpha=8, rslora=True)
    }


def test_compact_targets_keep_exactly_the_adapted_modules(tmp_path):
    model, _ = load_model("tiny-gpt2")
    inject_lora(model, ["attn.c_proj", "transformer.h.1.mlp.c_fc"], rank=2, alpha=2)
    save_adapter(model, tmp_path)
    fresh, _ = load_model("tiny-gpt2")
    result = load_adapter(fresh, tmp_path)
    assert set(result.replaced) == {n for n, _ in lora_layers(model)}


def base_logits(name, ids):
    return logits(load_model(name)[0], ids)


# Cross-loading is checked bitwise: both sides run the same operations in the same order.
@pytest.mark.parametrize(
    "name, targets, rslora",
    [("tiny-llama", "qkvo", False), ("tiny-gpt2", "all-linear", False), ("tiny-neox", "mlp", True)],
)
def test_peft_loads_our_adapter(tmp_path, sample_ids, name, targets, rslora):
    model = adapted(name, targets, rslora=rslora)
    save_adapter(model, tmp_path, base_model_name_or_path=name)
    base, _ = load_model(name)
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path))
    inner = theirs.base_model.model
    for module_name, layer in lora_layers(model):
        twin = inner.get_submodule(module_name)
        assert torch.equal(twin.lora_A["default"].weight, layer.lora_A.weight)
        assert torch.equal(twin.lora_B["default"].weight, layer.lora_B.weight)
        assert twin.scaling["default"] == layer.scaling
    ours_logits = logits(model, sample_ids)
    assert not torch.equal(ours_logits, base_logits(name, sample_ids)), "adapter must matter"
    assert torch.equal(logits(theirs, sample_ids), ours_logits)


@pytest.mark.parametrize(
    "name, targets, rslora",
    [("tiny-qwen2", "all-linear", False), ("tiny-gpt2", "qkvo", False), ("tiny-neox", "qv", True)],
)
def test_we_load_peft_adapter(tmp_path, sample_ids, name, targets, rslora):
    base, _ = load_model(name)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=rslora,
        target_modules=expand_targets(base, targets),
        task_type="CAUSAL_LM",
        fan_in_fan_out=(name == "tiny-gpt2"),
    )
    theirs = peft.get_peft_model(base, config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for pname, param in theirs.named_parameters():
            if "lora_" in pname:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    theirs.save_pretrained(str(tmp_path))
    ours, _ = load_model(name)
    load_adapter(ours, tmp_path)
    their_logits = logits(theirs, sample_ids)
    assert not torch.equal(their_logits, base_logits(name, sample_ids)), "adapter must matter"
    assert torch.equal(logits(ours, sample_ids), their_logits)
    assert {n for n, _ in lora_layers(ours)} == {
        n for n, m in theirs.base_model.model.named_modules() if hasattr(m, "lora_A")
    }
    assert all(layer.rslora == rslora for _, layer in lora_layers(ours))


def test_bad_adapter_directories(tmp_path):
    model, _ = load_model("tiny-llama")
    with pytest.raises(ValueError, match="no adapter_config.json"):
        load_adapter(model, tmp_path)
    (tmp_path / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "rank_pattern": {"q": 4}, "target_modules": ["q_proj"], "r": 2}'
    )  # (DoRA loads since issue 18: tests/test_variants.py)
    with pytest.raises(ValueError, match="rank_pattern"):
        load_adapter(model, tmp_path)
    # an lm_head saved whole (tied to the embeddings here): refused; a classifier head loads
    (tmp_path / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "modules_to_save": ["lm_head"], "target_modules": ["q_proj"]}'
    )
    with pytest.raises(ValueError, match="modules_to_save=\\['lm_head'\\] is not supported"):
        load_adapter(model, tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapter(model, tmp_path / "out")
    assert not has_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "target_modules": ["q_proj"], "r": 0, "lora_alpha": 8}'
    )
    adapter_weights_file(tmp_path).write_bytes(b"")
    assert has_adapter(tmp_path)
    with pytest.raises(ValueError, match=r"adapter_config.json: lora.rank must be a positive"):
        load_adapter(model, tmp_path)
    assert not list(lora_layers(model)), "a bad config must leave the model untouched"


def test_spec_from_peft_config():
    config = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "use_rslora": True}
    spec = spec_from_peft_config(config | {"init_lora_weights": "gaussian"}, torch.bfloat16)
    assert spec == LoraSpec(8, 16, 0.1, rslora=True, init="gaussian", dtype=torch.bfloat16)
    assert spec_from_peft_config(config | {"init_lora_weights": True}).init == "kaiming"
    with pytest.raises(ValueError, match="lacks lora_alpha"):
        spec_from_peft_config({"r": 8})


def test_adapters_with_different_specs_cannot_share_a_config(tmp_path):
    model, _ = load_model("tiny-llama")
    inject_lora(model, ["q_proj"], rank=4, alpha=8)
    inject_lora(model, ["v_proj"], rank=2, alpha=8)
    with pytest.raises(ValueError, match="adapters with different rank/alpha/dropout"):
        save_adapter(model, tmp_path)
