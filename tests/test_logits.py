"""The loss goes through the model's own logit post-processing (Gemma 2's soft-capping,
Cohere's logit scale, Granite's logits scaling), as the model's forward does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from study.trial.logits import LOGIT_POSTPROCESSING, target_logits
from study.trial.train import causal_lm_loss

SMALL = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 0}


def _model(kind: str):
    import transformers as tf

    torch.manual_seed(0)
    if kind == "gemma2":
        config = tf.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=3.0,
                                 attn_logit_softcapping=None, sliding_window=16)
        return tf.Gemma2ForCausalLM(config)
    if kind == "cohere":
        return tf.CohereForCausalLM(tf.CohereConfig(**SMALL, logit_scale=0.25))
    return tf.GraniteForCausalLM(tf.GraniteConfig(**SMALL, logits_scaling=4.0))


@pytest.mark.parametrize("kind", ["gemma2", "cohere", "granite"])
def test_target_logits_and_loss_equal_the_models_own(kind):
    model = _model(kind).eval()
    for name in LOGIT_POSTPROCESSING:  # the test would pass vacuously without one of them
        if getattr(model.config, name, None) not in (None, 1.0):
            break
    else:
        pytest.fail(f"{kind}'s config sets none of {LOGIT_POSTPROCESSING}")
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 300, (2, 12), generator=gen)
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt: no targets there
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        ours, targets, keep = target_logits(model, batch)
        theirs = model(input_ids=ids).logits[:, :-1][keep]
        loss, _ = causal_lm_loss(model, batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(theirs.float(), targets), rtol=1e-5, atol=1e-6)
    # the head alone differs: the check above is not satisfied by skipping the processing
    raw = model.get_output_embeddings()(model.base_model(input_ids=ids).last_hidden_state)
    assert not torch.allclose(raw[:, :-1][keep], theirs, atol=1e-3)


@pytest.mark.parametrize("kind", ["gemma2", "cohere", "granite"])
def test_chunked_loss_applies_the_post_processing_per_chunk(kind, monkeypatch):
    """Over chunks of 4 target positions (recomputed in backward) the loss is still the model's
    own: each chunk's logits go through its soft-cap or scale."""
    import study.trial.logits as logits

    model = _model(kind).train()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 300, (2, 12), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with torch.no_grad():
        theirs = F.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1).float(),
                                 ids[:, 1:].flatten())
    monkeypatch.setattr(logits, "LOGITS_CHUNK_BYTES", 4 * 300 * 4)
    assert logits.loss_chunk(model) == 4  # 22 targets: 6 chunks
    loss, count = causal_lm_loss(model, batch)
    loss.backward()  # the recompute under the same processing
    assert count == 22
    torch.testing.assert_close(loss.detach(), theirs, rtol=1e-5, atol=1e-6)
