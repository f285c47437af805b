"""Model registry, quantized loading and the bundled SmolLM2 cache."""

from __future__ import annotations

import pytest
import torch

import study.trial.models as models
from lora_impl import inject_lora, lora_layers
from study.sections import QuantConfig
from study.trial.models import REGISTRY, load_model

bnb = pytest.importorskip("bitsandbytes")  # a dependency; skip where it is missing


def test_unknown_name_lists_the_registry():
    with pytest.raises(models.ModelNotFoundError) as err:
        load_model("no-such-model")
    assert all(name in str(err.value) for name in REGISTRY)


def test_missing_directory_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(models.ModelNotFoundError, match="does not exist") as err:
        load_model(missing)
    assert missing in str(err.value)
    assert all(name in str(err.value) for name in REGISTRY)


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(models.ModelNotFoundError, match="could not load 'someorg/not-a-model'"):
        load_model("someorg/not-a-model")


@pytest.mark.parametrize("bits", [2, 3, 32, "4"])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="quant.bits must be one of 4, 8, 16"):
        load_model("tiny-llama", QuantConfig(bits=bits))


def test_bad_quant_type():
    with pytest.raises(ValueError, match="quant.type must be one of nf4, fp4"):
        load_model("tiny-llama", QuantConfig(bits=4, type="int4"))


def test_tiny_models_are_deterministic():
    a, _ = load_model("tiny-qwen2")
    b, _ = load_model("tiny-qwen2")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_local_directory_loads(tmp_path):
    model, tok = load_model("tiny-llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert tok2.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize(
    "bits, quant_type, double_quant, cls",
    [
        (4, "nf4", False, bnb.nn.Linear4bit),
        (4, "fp4", True, bnb.nn.Linear4bit),
        (8, "nf4", False, bnb.nn.Linear8bitLt),
    ],
)
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_quantized_models_replace_every_linear_but_the_head(
    name, bits, quant_type, double_quant, cls
):
    model, _ = load_model(name, QuantConfig(bits=bits, type=quant_type, double_quant=double_quant))
    linears = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    }
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear
    quantized = [m for m in linears.values() if m is not head]
    assert quantized and all(isinstance(m, cls) for m in quantized)
    if bits == 4:
        state = quantized[0].weight.quant_state
        assert state.quant_type == quant_type and state.nested == double_quant


def test_tiny_tokenizer_pad_is_eos_is_end_of_turn():
    _, tok = load_model("tiny-llama")
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("héllo wörld")["input_ids"]) == "héllo wörld"


@pytest.fixture(scope="module")
def bundled(tmp_path_factory, monkeypatch_module):
    """The bundled model loaded twice from a fresh cache, counting GGUF conversions."""
    cache = tmp_path_factory.mktemp("cache")
    calls = []
    convert = models.bundled._convert_gguf
    monkeypatch_module.setattr(
        models.bundled, "_convert_gguf", lambda *a: (calls.append(a), convert(*a))[1]
    )
    load_model("smollm2-135m", cache_dir=cache)
    model, tok = load_model("smollm2-135m", cache_dir=cache)
    return model, tok, calls, cache


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_bundled_model_second_load_reads_the_cache(bundled):
    _, _, calls, cache = bundled
    assert len(calls) == 1, "the GGUF must be converted once, then read from the cache"
    assert list(cache.glob("models/*/model.safetensors"))


def test_bundled_model_answers_a_chat_prompt(bundled):
    model, tok, _, _ = bundled
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_bundled_model_qv_trainable_count(bundled):
    model, _, _, _ = bundled
    rank = 8
    result = inject_lora(model, "qv", rank=rank, alpha=16)
    layers = [layer for _, layer in lora_layers(model)]
    assert len(layers) == 2 * model.config.num_hidden_layers
    # SmolLM2-135M: q 576->576, v 576->192 (3 kv heads of 64)
    assert result.trainable == model.config.num_hidden_layers * rank * ((576 + 576) + (576 + 192))


@pytest.mark.parametrize("bits, cls", [(4, bnb.nn.Linear4bit), (8, bnb.nn.Linear8bitLt)])
def test_bundled_model_quantized_replaces_every_linear_but_the_head(bundled, bits, cls):
    _, _, calls, cache = bundled
    converted = len(calls)
    model, _ = load_model("smollm2-135m", QuantConfig(bits=bits), cache_dir=cache)
    assert len(calls) == converted, "a quantized load reads the cached conversion too"
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear and head is model.lm_head
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = {n for n, m in linears.items() if isinstance(m, cls)}
    assert set(linears) - quantized == {"lm_head"}
    # SmolLM2: q, k, v, o, gate, up, down in each decoder layer
    assert len(quantized) == 7 * model.config.num_hidden_layers
    if bits == 4:
        assert all(linears[n].weight.quant_state.quant_type == "nf4" for n in quantized)
