"""study.trial.regions: the compiled view shares the model's weights, wraps its decoder layers
only, and leaves the model as it was. Dynamo's "eager" backend traces without compiling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from study.trial.compiling import view_loss
from study.trial.models import load_model
from study.trial.regions import block_count, compiled_view
from study.trial.train import batch_loss


def test_the_view_shares_every_weight_and_leaves_the_model_as_it_was():
    model, tok = load_model("tiny-llama")
    layers = list(model.model.layers)
    view = compiled_view(model, backend="eager")
    assert block_count(model) == len(layers) == model.config.num_hidden_layers
    assert list(model.model.layers) == layers  # the model's own tree is untouched
    assert view.model is not model.model and view.lm_head is model.lm_head
    assert [b._orig_mod for b in view.model.layers] == layers  # each layer wrapped, not copied
    ids = {id(p) for p in model.parameters()}
    assert {id(p) for p in view.parameters()} == ids

    ids_in = torch.randint(1, model.config.vocab_size, (2, 9))
    batch = {"input_ids": ids_in, "attention_mask": torch.ones_like(ids_in), "labels": ids_in}
    model.train()
    batch_loss(model, batch).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    batch_loss(view, batch).backward()  # through the view: gradients on the model's weights
    for name, param in model.named_parameters():
        if name in plain:
            torch.testing.assert_close(param.grad, plain[name], rtol=1e-6, atol=1e-7)


def test_a_model_without_repeated_blocks_is_refused():
    with pytest.raises(ValueError, match="Sequential has no repeated blocks"):
        compiled_view(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))


def test_the_view_follows_the_mode_of_the_model_the_loop_passes():
    """Made while the model was in eval mode (as loaded), the view's own containers would stay
    there; the loss through it takes the mode of the model the loop hands it."""
    model, _ = load_model("tiny-llama")
    model.eval()
    view = compiled_view(model, backend="eager")
    fn = view_loss(view, lambda m, batch: torch.tensor(float(all(x.training for x in m.modules()))))
    model.train()
    assert fn(model, {}) == 1.0
    model.eval()
    assert fn(model, {}) == 0.0 and not any(x.training for x in view.modules())
