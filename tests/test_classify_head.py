"""The classify task's model: our score head and LoRA against transformers' and PEFT's classes."""

from __future__ import annotations

import pytest
import torch

from lora_impl import inject_lora, load_adapter, save_adapter
from study.trial.batches import collate
from study.trial.data import Example
from study.trial.models import load_model
from study.trial.models.classifier import HEAD, as_classifier
from study.trial.train import batch_loss
from tests.conftest import TINY_MODELS, randomize_lora

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
LABELS = 3
TEXTS = ["a short one", "a rather longer text to classify here", "mid length text"]


def _ours(name: str, targets: str = "qv"):
    lm, tok = load_model(name)
    model = as_classifier(lm, LABELS, seed=3)
    inject_lora(model, targets, rank=4, alpha=8)
    randomize_lora(model, seed=5)
    model.score.requires_grad_(True)
    return model.eval(), tok


def _transformers_twin(name: str, pad_id: int):
    """transformers' own ``AutoModelForSequenceClassification`` with the same base weights."""
    lm, _ = load_model(name)
    config = lm.config
    config.num_labels, config.pad_token_id = LABELS, pad_id
    ref = transformers.AutoModelForSequenceClassification.from_config(config)
    body = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head")}
    missing, unexpected = ref.load_state_dict(body, strict=False)
    assert missing == [f"{HEAD}.weight"] and not unexpected
    return ref.eval()


def _batch(tok, texts=TEXTS, side="right"):
    tok.padding_side = side
    return tok(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_our_adapter_and_head_load_in_peft_with_equal_logits(name, tmp_path):
    ours, tok = _ours(name)
    save_adapter(ours, tmp_path, base_model_name_or_path=name, modules_to_save=(HEAD,))
    theirs = peft.PeftModel.from_pretrained(_transformers_twin(name, tok.pad_token_id), tmp_path)
    batch = _batch(tok)
    with torch.no_grad():
        expected = ours(batch["input_ids"], batch["attention_mask"])
        got = theirs(**batch).logits
    assert got.shape == (len(TEXTS), LABELS)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    assert not torch.allclose(expected[0], expected[1])  # a real input dependence, not a constant


@pytest.mark.parametrize("name", TINY_MODELS)
def test_peft_adapter_and_head_load_into_ours_with_equal_logits(name, tmp_path):
    _, tok = load_model(name)
    ref = _transformers_twin(name, tok.pad_token_id)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="SEQ_CLS",
                             init_lora_weights=False)  # random B: a non-trivial adapter
    theirs = peft.get_peft_model(ref, config)
    with torch.no_grad():  # a head that differs from a fresh one
        theirs.base_model.model.score.modules_to_save["default"].weight.normal_(0, 0.5)
    theirs.save_pretrained(tmp_path)
    lm, _ = load_model(name)
    ours = as_classifier(lm, LABELS, seed=11)
    load_adapter(ours, tmp_path)
    batch = _batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(batch["input_ids"], batch["attention_mask"]),
                                   theirs.eval()(**batch).logits, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_left_and_right_padding_give_the_same_logits(name):
    ours, tok = _ours(name)
    right, left = _batch(tok, side="right"), _batch(tok, side="left")
    assert not torch.equal(right["input_ids"], left["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(ours(left["input_ids"], left["attention_mask"]),
                                   ours(right["input_ids"], right["attention_mask"]),
                                   atol=TOL, rtol=0)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_only_the_adapter_and_the_head_train(name):
    ours, tok = _ours(name)
    frozen = {k: v.clone() for k, v in ours.named_parameters() if not v.requires_grad}
    trainable = {k: v.clone() for k, v in ours.named_parameters() if v.requires_grad}
    assert f"{HEAD}.weight" in trainable and all(
        "lora_" in k or k == f"{HEAD}.weight" for k in trainable)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    batch = collate([Example(input_ids=i, labels=[], label=k % LABELS)
                     for k, i in enumerate(ids)], tok.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    ours.train()
    for _ in range(3):
        batch_loss(ours, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    for key, before in frozen.items():
        assert torch.equal(dict(ours.named_parameters())[key], before), key
    changed = [k for k, v in ours.named_parameters() if v.requires_grad
               and not torch.equal(v, trainable[k])]
    assert f"{HEAD}.weight" in changed and any("lora_B" in k for k in changed)


def test_the_head_is_never_a_lora_target():
    lm, _ = load_model("tiny-llama")
    model = as_classifier(lm, LABELS)
    result = inject_lora(model, "all-linear", rank=2, alpha=4)
    assert result.replaced and not any(n.endswith(HEAD) for n in result.replaced)
    with pytest.raises(ValueError, match="output head"):
        inject_lora(as_classifier(load_model("tiny-llama")[0], LABELS), [HEAD], rank=2, alpha=4)
