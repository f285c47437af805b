"""train.batching: pad (today's batches), group (similar lengths), pack (one row, no padding);
the packing probe that refuses a model mixing packed examples; padding_share and the cost
model's shapes follow the mode."""

from __future__ import annotations

import json

import pytest
import torch

from study import record
from study.config import TrialConfig
from study.sections import DataConfig
from study.trial.batches import GROUP_WINDOW, Batcher, batch_shape, collate
from study.trial.data import IGNORE, Example, build_data
from study.trial.environment import padding_share
from study.trial.models import load_model, tiny_tokenizer
from study.trial.packing import check_batching, packing_errors
from study.trial.run import run_trial
from study.trial.train import batch_loss
from tests.conftest import TINY_MODELS, assert_resume_matches_whole, tiny_trial


def examples_of(lengths: list[int]) -> list[Example]:
    """Examples with these lengths (token i of example j is 10 + j + i; labels = input ids)."""
    out = []
    for j, n in enumerate(lengths):
        ids = [10 + j + i for i in range(n)]
        out.append(Example(input_ids=ids, labels=list(ids)))
    return out


def varied(n: int, seed: int = 0) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    return examples_of(torch.randint(1, 60, (n,), generator=gen).tolist())


def old_indices(n: int, batch_size: int, seed: int, k: int) -> list[int]:
    """BatchOrder's micro-batch k as it was before train.batching: the epoch's seeded randperm."""
    out = []
    for pos in range(k * batch_size, (k + 1) * batch_size):
        epoch, offset = divmod(pos, n)
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        out.append(torch.randperm(n, generator=gen).tolist()[offset])
    return out


def test_pad_is_todays_collate_bitwise():
    train = varied(23)
    batcher = Batcher(train, 4, seed=3, pad_id=7, mode="pad")
    for k in range(15):  # past the end of the first epoch (23 is no multiple of 4)
        batch = batcher.micro_batch(k)
        today = collate([train[i] for i in old_indices(23, 4, 3, k)], 7)
        assert set(batch) == {*today, "n_tokens"}
        for name, tensor in today.items():
            assert batch[name].dtype == tensor.dtype and torch.equal(batch[name], tensor)
        n_tokens = batch["n_tokens"]
        assert n_tokens.dtype == torch.int64 and n_tokens.dim() == 0
        assert int(n_tokens) == int(today["attention_mask"].sum())


def stream(batcher: Batcher, batches: int) -> list[int]:
    return [i for k in range(batches) for i in batcher.indices(k)]


@pytest.mark.parametrize("n", [4 * GROUP_WINDOW * 2 + 37, 22])  # several windows; one, uneven
def test_group_is_pure_covers_each_epoch_once_and_groups_lengths(n):
    train, size = varied(n), 4
    batcher = Batcher(train, size, seed=5, pad_id=0, mode="group")
    batches = 3 * n // size + 2  # three epochs, batches straddling their ends
    seq = stream(batcher, batches)
    for epoch in range(3):
        assert sorted(seq[epoch * n : (epoch + 1) * n]) == list(range(n))
    # a pure function of (seed, k): a fresh batcher asked in any order (a resume) agrees
    fresh = Batcher(train, size, seed=5, pad_id=0, mode="group")
    for k in reversed(range(batches)):
        assert fresh.indices(k) == seq[k * size : (k + 1) * size]
    assert stream(Batcher(train, size, seed=6, pad_id=0, mode="group"), batches) != seq
    pad = Batcher(train, size, seed=5, pad_id=0, mode="pad")

    def spread(b: Batcher) -> float:  # mean (longest - shortest) within a micro-batch
        lengths = [[b.lengths[i] for i in b.indices(k)] for k in range(batches)]
        return sum(max(x) - min(x) for x in lengths) / batches

    assert spread(batcher) < 0.5 * spread(pad)
    assert batcher.padding_share(batches) < 0.5 * pad.padding_share(batches)
    # the window's batches are not in length order: the order is shuffled
    widths = [batcher.shape(k)[1] for k in range(min(GROUP_WINDOW, n // size))]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def test_pack_is_one_row_with_restarting_positions_and_the_same_targets():
    train = varied(10)
    pad = Batcher(train, 3, seed=1, pad_id=0, mode="pad")
    packed = Batcher(train, 3, seed=1, pad_id=0, mode="pack")
    for k in range(5):
        assert packed.indices(k) == pad.indices(k)  # the same examples, packed
        batch, padded = packed.micro_batch(k), pad.micro_batch(k)
        lengths = [len(train[i].input_ids) for i in packed.indices(k)]
        assert "attention_mask" not in batch
        assert tuple(batch["input_ids"].shape) == batch_shape(lengths, "pack") == (1, sum(lengths))
        assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
        starts = [sum(lengths[:j]) for j in range(len(lengths))]
        assert all(batch["labels"][0, s] == IGNORE for s in starts)
        targets = batch["labels"][:, 1:]
        padded_targets = padded["labels"][:, 1:]
        assert torch.equal(targets[targets != IGNORE], padded_targets[padded_targets != IGNORE])
        assert int(batch["n_tokens"]) == sum(lengths) == int(padded["n_tokens"])


def test_padding_share_on_a_hand_made_example():
    train = examples_of([2, 4, 3, 1])  # 10 real tokens
    # one batch of all four: 4 rows x 4 = 16 slots, 6 of them padding
    assert Batcher(train, 4, 0, 0, "pad").padding_share(3) == pytest.approx(6 / 16)
    # groups of two: {1, 2} and {3, 4} (in either order): 2 x 2 + 2 x 4 = 12 slots
    assert Batcher(train, 2, 0, 0, "group").padding_share(2) == pytest.approx(2 / 12)
    assert Batcher(train, 4, 0, 0, "pack").padding_share(3) == 0
    assert Batcher(train, 4, 0, 0, "pad").padding_share(0) is None
    cfg = TrialConfig.from_dict({"train.batch_size": 4, "train.steps": 5, "train.grad_accum": 2})
    assert padding_share(cfg, train) == pytest.approx(6 / 16)
    assert padding_share(TrialConfig.from_dict({"method": "base"}), train) is None


def skills(n: int) -> list[Example]:
    return build_data(DataConfig(task="skills", size=n), tiny_tokenizer()).train


@pytest.mark.parametrize("name", TINY_MODELS)
def test_pack_gives_the_loss_and_lora_gradients_of_pad(name):
    from lora_impl import inject_lora

    model, tok = load_model(name)
    inject_lora(model, "all-linear", rank=4, alpha=8)
    with torch.no_grad():  # B != 0, so A's gradients are not zero
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(len(pname)))
    train = skills(12)
    assert len({len(e.input_ids) for e in train[:4]}) > 1  # lengths differ: padding to skip
    losses, grads = {}, {}
    for mode in ("pad", "pack"):
        batch = Batcher(train, 4, seed=0, pad_id=tok.pad_token_id, mode=mode).micro_batch(0)
        model.zero_grad(set_to_none=True)
        loss = batch_loss(model, batch)
        loss.backward()
        losses[mode] = loss.item()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert losses["pack"] == pytest.approx(losses["pad"], abs=1e-5)
    for pname, g in grads["pad"].items():
        assert g.abs().max() > 0, pname
        torch.testing.assert_close(grads["pack"][pname], g, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_registry_models_keep_packed_examples_apart(name):
    model, _ = load_model(name)
    isolation, position = packing_errors(model)
    assert isolation < 1e-6 and position < 1e-5
    check_batching("pack", model, name, skills(4))  # no refusal


def tiny_opt():
    from transformers import OPTConfig, OPTForCausalLM

    tok = tiny_tokenizer()
    config = OPTConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                       num_attention_heads=4, word_embed_proj_dim=64,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return OPTForCausalLM(config).eval(), tok


def test_pack_is_refused_in_one_line_where_the_model_mixes_examples():
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    bloom = BloomForCausalLM(BloomConfig(vocab_size=300, hidden_size=64, n_layer=2, n_head=4))
    for model, name in ((tiny_opt()[0], "my-opt"), (bloom.eval(), "my-bloom")):
        with pytest.raises(ValueError) as err:
            check_batching("pack", model, name, skills(4))
        message = str(err.value)
        assert "\n" not in message and name in message and "use pad, group" in message
        check_batching("group", model, name, skills(4))  # the other modes need nothing


def test_pack_is_refused_for_classify():
    labelled = [Example(input_ids=[1, 2, 3], labels=[], label=0)]
    with pytest.raises(ValueError, match="train.batching=pack is not supported for data.task="
                                         "classify.*use pad or group"):
        Batcher(labelled, 1, 0, 0, "pack")
    Batcher(labelled, 1, 0, 0, "group")


def test_a_refused_pack_trial_writes_nothing(tmp_path):
    model, tok = tiny_opt()
    model.save_pretrained(tmp_path / "opt")
    tok.save_pretrained(tmp_path / "opt")
    cfg = tiny_trial(**{"model.name": str(tmp_path / "opt"), "train.batching": "pack",
                        "lora.targets": "q_proj,v_proj"})
    with pytest.raises(ValueError, match="train.batching=pack needs a model"):
        run_trial(cfg, out_dir=tmp_path / "trial")
    assert not (tmp_path / "trial").exists()


def small_trial(mode: str, **overrides) -> TrialConfig:
    return tiny_trial(**{"train.batching": mode, "data.eval_size": 8, "data.test_size": 8,
                         "eval.early_prompts": 0, "eval.every": 6, **overrides})


@pytest.mark.parametrize("mode", [  # ~20 s each: pack, the new path, in the fast suite
    pytest.param("pad", marks=pytest.mark.slow), pytest.param("group", marks=pytest.mark.slow),
    "pack"])
def test_a_trial_runs_in_each_mode_and_records_its_padding(tmp_path, mode):
    metrics = run_trial(small_trial(mode), out_dir=tmp_path)
    assert metrics["final"] and metrics["eval_loss"] < 10
    env = record.read_env(tmp_path)
    assert env["attn_implementation"] == "sdpa"
    assert (env["padding_share"] == 0) == (mode == "pack")
    assert 0 <= env["padding_share"] < 1
    json.dumps(env)  # plain JSON


def test_group_pads_less_than_pad_in_a_trial():
    cfg = small_trial("pad", **{"data.size": 64})
    train = skills(64)
    group = small_trial("group", **{"data.size": 64})
    assert padding_share(group, train) < padding_share(cfg, train)



@pytest.mark.slow
@pytest.mark.parametrize("mode", ["group", "pack"])
def test_resume_in_a_mode_matches_an_uninterrupted_run(tmp_path, mode):
    # 18 examples in batches of 4: micro-batches straddle the epochs' ends
    cfg = small_trial(mode, **{"data.size": 18, "train.steps": 8, "eval.every": 4,
                               "lora.dropout": 0.1})
    assert_resume_matches_whole(cfg, tmp_path)


@pytest.mark.parametrize("mode", ["pad", "group", "pack"])
def test_the_cost_models_batches_are_the_loops_in_each_mode(mode):
    from study.cost.workload import workload

    tok = tiny_tokenizer()
    cfg = small_trial(mode, **{"train.steps": 7, "data.size": 40})
    train = build_data(cfg.data, tok).train
    batcher = Batcher(train, cfg.train.batch_size, cfg.seed, tok.pad_token_id, mode)
    seen = []
    for k in range(7):
        batch = batcher.micro_batch(k)
        rows, width = batch["input_ids"].shape
        seen.append((rows * width, rows, width, int((batch["labels"][:, 1:] != IGNORE).sum())))
    work = workload(cfg, tok)
    assert work.train.count == 7 and work.train.tokens == sum(s[0] for s in seen)
    assert work.train.squares == sum(s[1] * s[2] ** 2 for s in seen)
    assert work.train.targets == sum(s[3] for s in seen)
    assert work.largest == max(seen)[1:]
