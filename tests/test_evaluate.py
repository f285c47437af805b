"""Evaluation: answers read off the loss pass equal greedy generation; early evaluations answer a
fixed subset only."""

from __future__ import annotations

import pytest
import torch

from study.trial import evaluate
from study.trial.data import IGNORE, Example, build_data
from study.trial.evaluate import exact_match, generate, loss_and_answers, split_loss
from study.trial.models import load_model
from tests.conftest import tiny_trial


@pytest.fixture(scope="module")
def model_and_data():
    cfg = tiny_trial()
    torch.manual_seed(0)
    model, tok = load_model(cfg.model.name)
    return model, tok, build_data(cfg.data, tok).eval[:12]


def _as_reference(tok, e: Example, answer_ids: list[int], stop: int) -> Example:
    """``e``'s prompt with ``answer_ids`` + ``stop`` as its response (what collate trains on)."""
    response = answer_ids + [stop]
    return Example(input_ids=e.prompt_ids + response,
                   labels=[IGNORE] * len(e.prompt_ids) + response,
                   prompt_ids=e.prompt_ids, reference=tok.decode(answer_ids), prompt=e.prompt)


def test_answers_from_the_loss_pass_are_the_greedy_answers(model_and_data, monkeypatch):
    """Half the examples get the model's own greedy continuation as their reference (ended by a
    token the model then predicts, made the stop token): those must come out of the loss pass
    without generating; the rest are generated; every answer equals generating all of them."""
    model, tok, examples = model_and_data
    prompts = examples[:6]
    with torch.no_grad():
        ids = torch.tensor([prompts[0].prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                             do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    # the 4th greedy token becomes the stop token (eos), unless it already appeared earlier
    own, stop = out[:3].tolist(), int(out[3])
    assert stop not in own, "pick another prompt: the greedy continuation repeats its stop"
    monkeypatch.setattr(evaluate, "_stops", lambda _tok: [stop])
    right = _as_reference(tok, prompts[0], own, stop)
    wrong = [_as_reference(tok, e, [5, 6], stop) for e in prompts[1:4]]
    mixed = [right, *wrong, *examples[6:9]]

    generated_for = []
    real_generate = evaluate.generate

    def spy(model, tokenizer, examples, *args, **kwargs):
        generated_for.extend(examples)
        return real_generate(model, tokenizer, examples, *args, **kwargs)

    monkeypatch.setattr(evaluate, "generate", spy)
    loss, answers = loss_and_answers(model, tok, mixed, 4)
    assert answers == generate(model, tok, mixed, 4)
    assert right not in generated_for and len(generated_for) == len(mixed) - 1
    assert answers[0] == tok.decode(own) and exact_match(answers[:1], [right]) == 1.0
    assert loss == pytest.approx(split_loss(model, mixed, tok.pad_token_id))


def test_an_answer_longer_than_max_new_tokens_is_generated(model_and_data, monkeypatch):
    """Greedy decoding stops after max_new_tokens: a matching reference longer than that is not
    what generation would return, so it is generated (and cut), not read off."""
    model, tok, examples = model_and_data
    with torch.no_grad():
        ids = torch.tensor([examples[0].prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                             do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    own, stop = out[:5].tolist(), int(out[5])
    if stop in own:
        pytest.skip("the greedy continuation repeats its stop token")
    monkeypatch.setattr(evaluate, "_stops", lambda _tok: [stop])
    right = _as_reference(tok, examples[0], own, stop)
    _, long_enough = loss_and_answers(model, tok, [right], 6)
    _, cut = loss_and_answers(model, tok, [right], 3)
    assert long_enough == [tok.decode(own)]
    assert cut == generate(model, tok, [right], 3) and cut != long_enough


def test_early_evaluations_answer_the_first_prompts_only(tmp_path):
    from study.trial.run import _Trial

    trial = _Trial(tiny_trial(**{"eval.early_prompts": 5}), tmp_path, None, None)
    early, pairs = trial.quality("eval", final=False)
    assert [e for e, _ in pairs] == trial.data.eval[:5] and "exact_match" in early
    last, pairs = trial.quality("eval", final=True)
    assert len(pairs) == len(trial.data.eval) and early["eval_loss"] == last["eval_loss"]
    none = _Trial(tiny_trial(**{"eval.early_prompts": 0}), tmp_path, None, None)
    loss_only, pairs = none.quality("eval", final=False)
    assert pairs == [] and "exact_match" not in loss_only and "eval_loss" in loss_only


def test_an_answer_that_could_still_be_correct_is_never_cut_short():
    """``could_match`` on every prefix of outputs that are correct (formatting noise included)
    is True; on answers that went wrong it is False."""
    from hypothesis import given
    from hypothesis import strategies as st

    from study.trial.tasks.skills import could_match, is_correct

    noise = st.sampled_from(["", " ", "  ", "\n", '"', "'", "`", ".", '."', " ."])
    word = st.text(alphabet="abcXYZ019 .,-", min_size=1, max_size=12)

    @given(word, noise, noise, st.booleans())
    def check(reference, before, after, upper):
        output = before + (reference.upper() if upper else reference) + after
        if is_correct(output, reference):
            assert all(could_match(output[:k], reference) for k in range(len(output) + 1))

    check()
    assert not could_match("Lon", "Paris") and not could_match("Paris is", "Paris")
    assert could_match('"PARIS.', "paris") and could_match("", "x") and could_match("a\ufffd", "b")


def test_judged_answers_stop_early_and_score_the_same(model_and_data):
    """Generation that stops where an answer can no longer be right gives the same exact match
    as generating every answer in full, and the shown answers stay whole."""
    model, tok, examples = model_and_data
    refs = [_as_reference(tok, e, list(e.input_ids[len(e.prompt_ids):][:2]), tok.eos_token_id)
            for e in examples]
    _, full = loss_and_answers(model, tok, refs, 6)
    _, judged = loss_and_answers(model, tok, refs, 6, judge=True, shown=3)
    assert exact_match(judged, refs) == exact_match(full, refs)
    assert judged[:3] == full[:3]  # shown in examples.json: generated in full
    assert [len(j) <= len(f) for j, f in zip(judged, full)] == [True] * len(refs)
    assert any(len(j) < len(f) for j, f in zip(judged[3:], full[3:]))  # some stopped early
