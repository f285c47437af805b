"""Our DPO equals TRL's ``DPOTrainer`` with the same PEFT LoRA: losses, rewards, log-probs and the
gradients of A and B, over 3 optimizer steps, for sigmoid and IPO, with the reference as
disabled adapters and as log-probabilities computed before training (TRL's
``compute_ref_log_probs``, what its ``precompute_ref_log_probs`` stores).

Both sides see the same token ids in the same batch layout (TRL's collator and ours: chosen rows,
then rejected rows, right-padded); each side steps its own SGD, so the comparison holds
while the weights move.
"""

from __future__ import annotations

import pytest
import torch

from lora_impl import inject_lora, lora_layers
from lora_impl.inject import expand_targets
from study.sections_run import DpoConfig
from study.trial.batches import pair_batch
from study.trial.data import encode_preference
from study.trial.dpo import make_loss, pair_losses, sequence_logps
from study.trial.logits import target_index
from study.trial.models import load_model
from study.trial.tasks.preference import builtin_triples
from tests.test_peft_parity import lora_grads, peft_twin

trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")

TOL = 1e-5
STEPS, PAIRS, LR = 3, 4, 1.0


def _examples(tokenizer):
    triples = builtin_triples(PAIRS)
    return [encode_preference(tokenizer, p, c, r, 96) for p, c, r, _ in triples]


def _trainer(model, tokenizer, cfg: DpoConfig, tmp_path, peft_config=None):
    # dpo.sft_weight is TRL's "sft" loss type beside the preference loss, weighted
    losses, weights = ([cfg.loss, "sft"], [1.0, cfg.sft_weight]) if cfg.sft_weight else (
        [cfg.loss], None)
    args = trl.DPOConfig(output_dir=str(tmp_path), beta=cfg.beta, loss_type=losses,
                         loss_weights=weights, report_to=[],
                         use_cpu=True, per_device_train_batch_size=PAIRS, max_steps=STEPS,
                         bf16=False)  # TRL defaults to bf16 where the machine has it: fp32 here
    text = datasets.Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2)
    return trl.DPOTrainer(model=model, args=args, train_dataset=text, processing_class=tokenizer,
                          peft_config=peft_config)


def _twins(name: str, cfg: DpoConfig, reference: str, tokenizer, tmp_path):
    """(ours, TRL's trainer) holding the same non-zero A and B. ``disabled``: TRL wraps the base
    with a fresh PEFT adapter (init_lora_weights=False), whose reference is the adapters switched
    off, copied into ours. ``precomputed``: TRL gets a model that already has the adapter, whose
    reference is the starting adapter (TRL's frozen "ref" copy), as our cached reference is."""
    if reference == "precomputed":
        ours, theirs = peft_twin(name, 16, "all-linear", rank=4, alpha=8.0, rslora=False)
        return ours, _trainer(theirs, tokenizer, cfg, tmp_path)
    ours, _ = load_model(name)
    inject_lora(ours, "all-linear", rank=4, alpha=8.0)
    config = peft.LoraConfig(r=4, lora_alpha=8.0, lora_dropout=0.0, init_lora_weights=False,
                             target_modules=expand_targets(ours, "all-linear"),
                             task_type="CAUSAL_LM")
    trainer = _trainer(load_model(name)[0], tokenizer, cfg, tmp_path, config)
    inner = trainer.model.base_model.model
    with torch.no_grad():
        for module_name, layer in lora_layers(ours):
            layer.lora_A.weight.copy_(inner.get_submodule(module_name).lora_A["default"].weight)
            layer.lora_B.weight.copy_(inner.get_submodule(module_name).lora_B["default"].weight)
    assert any(layer.lora_B.weight.abs().sum() > 0 for _, layer in lora_layers(ours))
    return ours, trainer


def _trl_inputs(examples, pad_id):
    collator = trl.trainer.dpo_trainer.DataCollatorForPreference(pad_token_id=pad_id)
    rows = [{"prompt_ids": e.prompt_ids, "chosen_ids": e.input_ids[len(e.prompt_ids):],
             "rejected_ids": e.rejected_ids[len(e.prompt_ids):]} for e in examples]
    return collator(rows)


def _ours_batch(examples, pad_id, ref=None):
    batch = pair_batch(examples, pad_id)
    batch["target_index"] = target_index(batch["labels"])
    if ref is not None:
        batch["ref_logps"] = ref
    return batch


# one case in `make test` (each builds a TRL trainer: ~20 s), the others in `make test-slow`;
# the last two add the SFT term (dpo.sft_weight) to each loss
CASES = [pytest.param(name, loss, reference, 0.0, marks=() if (name, loss, reference) == (
    "tiny-qwen2", "ipo", "precomputed") else pytest.mark.slow)
    for name in ("tiny-llama", "tiny-qwen2") for loss in ("sigmoid", "ipo")
    for reference in ("disabled", "precomputed")] + [
    pytest.param("tiny-qwen2", loss, reference, 0.5, marks=pytest.mark.slow)
    for loss, reference in (("sigmoid", "precomputed"), ("ipo", "disabled"))]


@pytest.mark.parametrize(("name", "loss", "reference", "sft_weight"), CASES)
def test_dpo_equals_trl(name, loss, reference, sft_weight, tmp_path):
    torch.manual_seed(0)
    _, tokenizer = load_model(name)
    examples = _examples(tokenizer)
    pad_id = tokenizer.pad_token_id
    cfg = DpoConfig(loss=loss, beta=0.5, sft_weight=sft_weight)
    ours, trainer = _twins(name, cfg, reference, tokenizer, tmp_path)
    theirs = trainer.model
    inputs = _trl_inputs(examples, pad_id)
    ref = None
    if reference == "precomputed":  # both from the starting model, before any step
        trainer.precompute_ref_logps = True
        theirs.train()
        inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = trainer.compute_ref_log_probs(
            theirs, inputs)
        with torch.no_grad():
            ref = sequence_logps(ours, _ours_batch(examples, pad_id))[0]
    batch = _ours_batch(examples, pad_id, ref)
    ours.train(), theirs.train()
    mine = [p for p in ours.parameters() if p.requires_grad]
    other = [p for p in theirs.parameters() if p.requires_grad]
    # SGD, not Adam: Adam's first steps are lr x sign(g), which turns fp32 noise in a gradient
    # near zero into a full step and the two sides apart; SGD moves both by the same gradients
    opt_ours, opt_theirs = torch.optim.SGD(mine, lr=LR), torch.optim.SGD(other, lr=LR)
    loss_fn = make_loss(cfg)
    for step in range(STEPS):
        their_loss = trainer.compute_loss(theirs, inputs)
        their_loss.backward()
        our_loss = loss_fn(ours, batch)
        our_loss.backward()
        assert abs(float(our_loss.detach()) - float(their_loss.detach())) <= TOL
        trainer.log({})  # TRL's batch means of this step, into its public log history
        _check_logged(ours, batch, cfg, trainer.state.log_history[-1])
        _check_grads(ours, theirs, step)
        for opt in (opt_ours, opt_theirs):
            opt.step()
            opt.zero_grad(set_to_none=True)


def _check_logged(model, batch, cfg, logged):
    """Rewards, their accuracy and margin, and the log-probs, as TRL logs them (batch means)."""
    with torch.no_grad():
        logps, lengths, _, _ = sequence_logps(model, batch)
        ref = batch.get("ref_logps")
        if ref is None:
            from lora_impl import disable_adapters

            with disable_adapters(model):
                ref = sequence_logps(model, batch)[0]
        _, chosen, rejected = pair_losses(logps, ref, lengths, cfg)
    chosen_logps, rejected_logps = logps.chunk(2)
    ours = {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "logps/chosen": chosen_logps.mean(), "logps/rejected": rejected_logps.mean()}
    # rewards and log-probs are sums over ~20 response tokens of fp32 log-probs (~-90 here): the
    # two sides run the output head on different shapes (ours at the target positions only), so
    # they agree to 1e-5 relative to that scale, the loss and gradients to 1e-5 absolute
    scale = float(logps.abs().max())
    for key, value in ours.items():
        assert abs(float(value) - logged[key]) <= TOL * max(1.0, scale), key


def _check_grads(ours, theirs, step):
    mine = lora_grads(ours)
    other = {k: g for k, g in lora_grads(theirs).items() if ".ref." not in k}  # TRL's frozen copy
    assert mine.keys() == other.keys() and len(list(lora_layers(ours))) > 0
    for key, grad in mine.items():
        diff = (grad - other[key]).abs().max()
        assert torch.allclose(grad, other[key], atol=TOL, rtol=TOL), (step, key, float(diff))
