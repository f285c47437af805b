"""LoRA variants (issue 18): DoRA against PEFT on plain, 8-bit and 4-bit bases; merge and unmerge;
PEFT's file format; the variant registry and its one-line refusals."""

from __future__ import annotations

import pytest
import torch

from lora_impl import inject_lora, load_adapter, lora_layers, merge, save_adapter, unmerge
from lora_impl.dora import DoRALinear
from lora_impl.inject import expand_targets
from lora_impl.variants import layer_class
from study.sections import QuantConfig
from study.trial.models import load_model
from tests.conftest import randomize_lora
from tests.test_peft_parity import lora_grads, peft_twin

bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")

TOL = 1e-5


def dora_twin(name: str, bits: int, targets: str, rslora: bool = False, device=None):
    """(ours, PEFT's) DoRA on two loads of one model: the same random A, B and magnitude."""
    return peft_twin(name, bits, targets, rank=4, alpha=12, rslora=rslora, variant="dora",
                     device=device)


DORA_CASES = [
    ("tiny-llama", 16, "all-linear", False),
    ("tiny-qwen2", 16, "all-linear", True),
    ("tiny-gpt2", 16, "all-linear", False),  # Conv1D
    ("tiny-neox", 16, "all-linear", False),
    # 8-bit: PEFT's DoRA forward fails on CPU here (bitsandbytes' int8 matmul finds state.SCB
    # None after PEFT dequantizes the weight): tested against the formula by hand below
    ("tiny-qwen2", 4, "all-linear", False),
    ("tiny-neox", 4, "qv", True),
]


@pytest.mark.parametrize("name, bits, targets, rslora", DORA_CASES)
def test_dora_logits_and_gradients_match_peft(name, bits, targets, rslora, sample_ids):
    ours, theirs = dora_twin(name, bits, targets, rslora)
    assert all(isinstance(layer, DoRALinear) for _, layer in lora_layers(ours))
    with torch.no_grad():
        diff = (ours(sample_ids).logits - theirs(sample_ids).logits).abs().max().item()
    assert diff <= TOL, f"eval logits differ by {diff}"
    ours.train()
    theirs.train()
    torch.manual_seed(0)
    out_ours = ours(sample_ids, labels=sample_ids)
    torch.manual_seed(0)
    out_theirs = theirs(sample_ids, labels=sample_ids)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    mine, peft_grads = lora_grads(ours), lora_grads(theirs)
    assert mine.keys() == peft_grads.keys()
    assert any(k.endswith("lora_magnitude") for k in mine)
    for key, grad in mine.items():
        gdiff = (grad - peft_grads[key]).abs().max().item()
        assert gdiff <= TOL, f"grad of {key} differs by {gdiff}"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [8, 4])
def test_dora_on_cuda_matches_peft_where_its_8bit_path_runs(bits, sample_ids):
    """On CUDA PEFT's 8-bit DoRA runs (on the CPU it does not, see DORA_CASES): fp32 compute, so
    the two differ only by kernel order (1e-4)."""
    ours, theirs = dora_twin("tiny-qwen2", bits, "all-linear", device="cuda")
    ids = sample_ids.cuda()
    with torch.no_grad():
        diff = (ours(ids).logits - theirs(ids).logits).abs().max().item()
    assert diff <= 1e-4, f"eval logits differ by {diff}"
    ours(ids, labels=ids).loss.backward()
    theirs(ids, labels=ids).loss.backward()
    mine, peft_grads = lora_grads(ours), lora_grads(theirs)
    assert mine.keys() == peft_grads.keys()
    for key, grad in mine.items():
        gdiff = (grad - peft_grads[key]).abs().max().item()
        assert gdiff <= 1e-4, f"grad of {key} differs by {gdiff}"


def test_dora_on_an_8bit_base_equals_the_formula_by_hand():
    """y = base(x) + (m / n - 1) (base(x) - b) + (m / n) s B A x, n = ||W + s B A||_row with W
    the int8 weight dequantized (CB * SCB / 127): what PEFT computes where it runs."""
    model, _ = load_model("tiny-llama", QuantConfig(bits=8))
    inject_lora(model, "qv", rank=4, alpha=12, variant="dora")
    randomize_lora(model, seed=5)
    _, layer = next(iter(lora_layers(model)))
    with torch.no_grad():
        layer.lora_magnitude.mul_(1.2)
        x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
        base = layer.base_layer(x)
        cb, scb = layer.base_layer.state.CB, layer.base_layer.state.SCB
        w = cb.float() * scb.float().view(-1, 1) / 127
        ba = layer.lora_B.weight @ layer.lora_A.weight
        n = torch.linalg.norm(w + layer.scaling * ba, dim=1)
        scale = layer.lora_magnitude / n
        bias = layer.base_layer.bias
        plain = base - bias if bias is not None else base
        expected = base + (scale - 1) * plain + scale * layer.scaling * (x @ ba.T)
        assert (layer(x) - expected).abs().max().item() <= TOL


def test_a_fresh_dora_layer_is_the_base_layer(sample_ids):
    model, _ = load_model("tiny-llama")
    with torch.no_grad():
        before = model(sample_ids).logits
    inject_lora(model, "all-linear", rank=4, alpha=8, variant="dora")
    with torch.no_grad():
        assert (model(sample_ids).logits - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_dora_merge_and_unmerge_round_trip(bits, sample_ids):
    model, _ = load_model("tiny-llama", QuantConfig(bits=bits))
    inject_lora(model, "all-linear", rank=4, alpha=8, variant="dora")
    randomize_lora(model, seed=1)
    layers = [layer for _, layer in lora_layers(model)]
    originals = [layer.base_layer.weight.data.clone() for layer in layers]
    model.eval()
    with torch.no_grad():
        unmerged = model(sample_ids).logits
        assert merge(model) == len(layers)
        merged = model(sample_ids).logits
        unmerge(model)
        again = model(sample_ids).logits
    tol = 1e-5 if bits == 16 else 0.5  # a quantized base re-quantizes W' (as merging LoRA does)
    assert (merged - unmerged).abs().max().item() <= tol
    assert (again - unmerged).abs().max().item() <= 1e-6
    for layer, original in zip(layers, originals):
        assert torch.equal(layer.base_layer.weight.data, original)  # bitwise, every base


def test_dora_saves_in_peft_format_and_loads_back_in_peft_and_ours(tmp_path, sample_ids):
    model, _ = load_model("tiny-qwen2")
    inject_lora(model, "qv", rank=4, alpha=8, variant="dora")
    randomize_lora(model, seed=2)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_magnitude.mul_(1.1)
        expected = model(sample_ids).logits
    save_adapter(model, tmp_path / "a")
    base, _ = load_model("tiny-qwen2")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "a")
    again, _ = load_model("tiny-qwen2")
    load_adapter(again, tmp_path / "a")
    with torch.no_grad():
        assert (theirs(sample_ids).logits - expected).abs().max().item() <= 1e-4
        assert (again(sample_ids).logits - expected).abs().max().item() <= 1e-6
    assert all(isinstance(layer, DoRALinear) for _, layer in lora_layers(again))


@pytest.mark.parametrize(
    "name, message",
    [
        ("nope", "lora.variant must be one of lora, dora or module:Class"),
        ("no_such_module_xyz:Cls", "cannot import no_such_module_xyz (ModuleNotFoundError"),
        ("lora_impl.layer:Missing", "lora_impl.layer has no Missing"),
        ("lora_impl.layer:LoraSpec", "LoraSpec is not a subclass of lora_impl.LoRALinear"),
    ],
)
def test_a_variant_that_cannot_be_used_is_one_line(name, message):
    with pytest.raises(ValueError, match="lora.variant") as err:
        layer_class(name)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_loraplus_groups_equal_peft_create_loraplus_optimizer(variant):
    from peft.optimizers import create_loraplus_optimizer

    from lora_impl.loraplus import loraplus_groups
    from study.trial.models.classifier import as_classifier

    ours, _ = load_model("tiny-qwen2")
    ours = as_classifier(ours, 3, 0)  # a head: its 2-D weight with A, its bias with B
    inject_lora(ours, "all-linear", rank=4, alpha=8, variant=variant)
    for name, param in ours.named_parameters():
        param.requires_grad_("lora_" in name or name.startswith("score"))
    ref, _ = load_model("tiny-qwen2")
    ref = as_classifier(ref, 3, 0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=expand_targets(ref, "all-linear"),
                             use_dora=variant == "dora", modules_to_save=["score"])
    theirs = peft.get_peft_model(ref, config)
    optimizer = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3,
                                          loraplus_lr_ratio=16, loraplus_weight_decay=0.01)

    def named(groups, model, strip):
        ids = {id(p): strip(n) for n, p in model.named_parameters()}
        return sorted((g["lr"], g["weight_decay"], tuple(sorted(ids[id(p)] for p in g["params"])))
                      for g in groups if g["params"])

    def peft_name(name: str) -> str:
        name = name.removeprefix("base_model.model.").replace(".default", "")
        name = name.replace("lora_magnitude_vector.weight", "lora_magnitude")
        return name.replace("score.modules_to_save.", "score.")

    mine = named(loraplus_groups(ours, 1e-3, 16, 0.01), ours, lambda n: n)
    assert mine == named(optimizer.param_groups, theirs, peft_name)
    assert [lr for lr, _, _ in mine] == [pytest.approx(1e-3)] + [pytest.approx(16e-3)] * (
        len(mine) - 1)


def test_loraplus_keeps_its_ratio_through_the_trial_s_lr_schedule(tmp_path, monkeypatch):
    """The loop's warm-up and cosine scale each group's lr instead of replacing it. They used to
    set every group to the schedule's lr, and LoRA+ trained exactly as LoRA: bench/variants.py
    found it, every paired eval-loss difference zero."""
    from study.trial import run as T
    from study.trial.train import lr_at
    from tests.conftest import tiny_trial

    made = []
    real = T.make_optimizer
    monkeypatch.setattr(T, "make_optimizer", lambda *a: made.append(real(*a)) or made[-1])
    cfg = tiny_trial(**{"lora.loraplus_ratio": 16, "train.steps": 3, "eval.every": 3})
    plus = T.run_trial(cfg, out_dir=tmp_path / "plus")
    last = lr_at(2, 3, cfg.train)
    lrs = sorted(g["lr"] for g in made[0].param_groups)
    assert lrs[0] == pytest.approx(last) and lrs[-1] == pytest.approx(16 * last)
    plain = T.run_trial(tiny_trial(**{"train.steps": 3, "eval.every": 3}),
                        out_dir=tmp_path / "plain")
    assert [g["lr"] for g in made[1].param_groups] == [pytest.approx(last)]
    assert plus["eval_loss"] != plain["eval_loss"]


def init_twin(name: str, init: str, targets: str = "all-linear", bits: int = 16):
    """(ours, PEFT's) initialised with ``init`` from the same base weights."""
    ours, _ = load_model(name, QuantConfig(bits=bits))
    ref, _ = load_model(name, QuantConfig(bits=bits))
    inject_lora(ours, targets, rank=4, alpha=8, init=init)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=init,
                             target_modules=expand_targets(ref, targets),
                             fan_in_fan_out=(name == "tiny-gpt2" and bits == 16))
    return ours, peft.get_peft_model(ref, config)


@pytest.mark.parametrize("name, init, bits", [
    ("tiny-llama", "pissa", 16), ("tiny-qwen2", "olora", 16), ("tiny-gpt2", "pissa", 16),
    ("tiny-neox", "olora", 16), ("tiny-llama", "olora", 4), ("tiny-qwen2", "olora", 8),
])
def test_pissa_and_olora_inits_equal_peft(name, init, bits, sample_ids):
    ours, theirs = init_twin(name, init, bits=bits)
    inner = theirs.base_model.model
    for module_name, layer in lora_layers(ours):
        twin = inner.get_submodule(module_name)
        for mine, peft_weight in ((layer.lora_A.weight, twin.lora_A["default"].weight),
                                  (layer.lora_B.weight, twin.lora_B["default"].weight)):
            assert (mine - peft_weight).abs().max().item() <= TOL
        if bits == 16:
            residual = twin.base_layer.weight
            assert (layer.base_layer.weight - residual).abs().max().item() <= TOL
        else:  # the residual, re-quantized: the same 4-bit tensor
            assert torch.equal(layer.base_layer.weight.data, twin.base_layer.weight.data)
    with torch.no_grad():
        diff = (ours(sample_ids).logits - theirs(sample_ids).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("name, init, rslora, head", [
    ("tiny-llama", "pissa", False, False), ("tiny-qwen2", "olora", True, False),
    ("tiny-qwen2", "pissa", False, True),
])
def test_a_pissa_or_olora_adapter_exports_converted_for_the_original_base(
        name, init, rslora, head, tmp_path, sample_ids):
    """Trained (A, B changed), saved: PEFT loads it on the original fp32 base and gives our
    logits; a classification head comes along as modules_to_save."""
    from study.trial.models.classifier import as_classifier

    def fresh():
        model, _ = load_model(name)
        return as_classifier(model, 3, 0) if head else model

    ours = fresh()
    inject_lora(ours, "all-linear", rank=4, alpha=8, init=init, rslora=rslora)
    randomize_lora(ours, seed=9, std=0.05)  # stands for training
    with torch.no_grad():
        if head:
            ours.score.weight.add_(0.1)
        expected = logits(ours(sample_ids))
    save_adapter(ours, tmp_path / "a", modules_to_save=("score",) if head else ())
    config = peft.LoraConfig.from_pretrained(tmp_path / "a")
    assert config.r == 8 and config.lora_alpha == pytest.approx(8 * (2 ** 0.5 if rslora else 2))
    theirs = peft.PeftModel.from_pretrained(fresh(), tmp_path / "a")
    with torch.no_grad():
        assert (logits(theirs(sample_ids)) - expected).abs().max().item() <= 1e-4


def logits(out) -> torch.Tensor:
    """A causal LM's output has .logits; our classifier returns the logits themselves."""
    return getattr(out, "logits", out)


@pytest.mark.parametrize("name, init, bits, message", [
    ("tiny-llama", "pissa", 4, "lora.init pissa on a 4bit base is not supported"),
    ("tiny-llama", "pissa_niter_2", 8, "lora.init pissa_niter_2 on a 8bit base"),
    ("tiny-gpt2", "olora", 16, "lora.init olora on GPT-2's Conv1D layers is not supported"),
])
def test_inits_peft_cannot_do_are_refused_in_one_line(name, init, bits, message):
    model, _ = load_model(name, QuantConfig(bits=bits))
    with pytest.raises(ValueError, match=message) as err:
        inject_lora(model, "qv", rank=4, alpha=8, init=init)
    assert "\n" not in str(err.value)


def test_dora_with_a_weight_init_is_refused():
    from lora_impl import LoraSpec

    with pytest.raises(ValueError, match="lora.init olora with lora.variant dora"):
        LoraSpec(rank=4, alpha=8, init="olora", variant="dora")
    with pytest.raises(ValueError, match="lora.init must be one of kaiming, gaussian, pissa"):
        LoraSpec(rank=4, alpha=8, init="pissa_niter_0")


@pytest.mark.parametrize("init, rslora, bits", [("pissa", False, 16), ("olora", True, 16),
                                                ("olora", False, 4), ("gaussian", True, 8)])
def test_merge_and_unmerge_round_trip_for_each_init(init, rslora, bits, sample_ids):
    model, _ = load_model("tiny-llama", QuantConfig(bits=bits))
    inject_lora(model, "all-linear", rank=4, alpha=8, init=init, rslora=rslora)
    randomize_lora(model, seed=4, std=0.05)
    layers = [layer for _, layer in lora_layers(model)]
    originals = [layer.base_layer.weight.data.clone() for layer in layers]
    model.eval()
    with torch.no_grad():
        unmerged = model(sample_ids).logits
        merge(model)
        merged = model(sample_ids).logits
        unmerge(model)
    assert (merged - unmerged).abs().max().item() <= (1e-5 if bits == 16 else 0.5)
    for layer, original in zip(layers, originals):
        if bits == 16:  # W_res + d - d
            assert (layer.base_layer.weight.data - original).abs().max().item() <= 1e-6
        else:
            assert torch.equal(layer.base_layer.weight.data, original)
