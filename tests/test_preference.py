"""The preference task's data (the built-in recipe, HH-RLHF's split, local files), its batches and
the DPO loss's formulas; TRL parity is tests/test_dpo_trl.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from study.config import TrialConfig
from study.sections import DataConfig
from study.sections_run import DpoConfig
from study.trial.batches import Batcher, pair_batch
from study.trial.data import IGNORE, build_data, encode_preference
from study.trial.dpo import make_loss, pair_losses, sequence_logps
from study.trial.logits import target_index
from study.trial.models import load_model
from study.trial.tasks import preference, skills
from study.trial.tasks.text import DataSourceError

FIXTURE = Path(__file__).parent / "fixtures" / "hh_rlhf_sample.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny-llama")[1]


def test_builtin_rejected_answers_are_plausible_wrong_and_deterministic():
    triples = preference.builtin_triples(300)
    assert triples == preference.builtin_triples(300)  # the recipe is seeded by position
    pool = skills.skill_pool(300)
    assert [t[0] for t in triples] == [e.prompt for e in pool]  # the skills task's order
    for _, chosen, rejected, skill in triples:
        assert not skills.is_correct(rejected, chosen)
        if skill == "add":
            assert abs(int(rejected) - int(chosen)) in (1, 10)
        elif skill == "reverse":
            assert sorted(rejected.split(", ")) == sorted(chosen.split(", "))
        else:  # a real date, one month or one day away
            month, day, year = rejected.replace(",", "").split()
            assert month in skills.MONTHS and year == chosen.split()[-1]
            assert 1 <= int(day) <= skills.DAYS_IN_MONTH[skills.MONTHS.index(month)]


def test_hh_rows_split_at_the_last_assistant_turn_and_bad_rows_are_dropped_and_counted(
        monkeypatch):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    monkeypatch.setattr(preference, "hub_split",
                        lambda name, split: rows if split == "train" else [])
    triples, info = preference.preference_triples("hh-rlhf", "prompt", "chosen", "rejected", 0)
    assert info == {"rows": 6, "dropped_unsplit_or_equal": 3}
    assert triples[0] == ("Human: What is the capital of France?",
                          "Paris is the capital of France.", "I don't know.", None)
    prompt, chosen, rejected, _ = triples[1]  # a dialogue: the earlier turns are the prompt
    assert prompt.endswith("Human: Name a color.") and "Hello! How can I help?" in prompt
    assert (chosen, rejected) == ("Blue.", "No.")


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "p", "chosen": "a"}], "has no column 'rejected'"),
    ([{"prompt": "p", "chosen": "a", "rejected": "a"}], "row 1: the chosen response equals"),
    ([{"prompt": " ", "chosen": "a", "rejected": "b"}], "row 1: empty 'prompt'"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"},
      {"prompt": "p", "chosen": "", "rejected": "b"}], "row 2: empty 'chosen'"),
])
def test_a_bad_local_file_is_one_line_naming_it(tmp_path, rows, message):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataSourceError, match=message) as err:
        preference.preference_triples(str(path), "prompt", "chosen", "rejected", 0)
    assert "\n" not in str(err.value)


def test_columns_are_named_by_the_config(tmp_path, tokenizer):
    path = tmp_path / "prefs.csv"
    lines = ["q,good,bad"] + [f"question {i},answer {i},wrong {i}" for i in range(40)]
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(task="preference", source=str(path), size=10, eval_size=10, test_size=10,
                     prompt_column="q", chosen_column="good", rejected_column="bad")
    data = build_data(cfg, tokenizer, tmp_path / "cache")
    assert len(data.train) == 10 and {e.reference.split()[0] for e in data.train} == {"answer"}


def test_an_example_holds_both_responses_on_one_prompt_cut_at_its_start(tokenizer):
    long_prompt = "word " * 80
    example = encode_preference(tokenizer, long_prompt, "yes", "a much longer answer", 64)
    assert len(example.input_ids) <= 64 and len(example.rejected_ids) == 64
    n = len(example.prompt_ids)
    assert example.input_ids[:n] == example.rejected_ids[:n] == example.prompt_ids
    assert example.labels[:n] == example.rejected_labels[:n] == [IGNORE] * n
    assert example.labels[n:] == example.input_ids[n:]
    assert encode_preference(tokenizer, "p", "x " * 100, "y", 64) is None  # cannot fit


def test_pair_batches_hold_chosen_rows_then_rejected_rows(tokenizer):
    examples = [encode_preference(tokenizer, p, c, r, 96)
                for p, c, r, _ in preference.builtin_triples(3)]
    for i, e in enumerate(examples):
        e.ref_logps = [-float(i), -10.0 - i]
    batch = pair_batch(examples, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6
    for i, e in enumerate(examples):
        assert batch["input_ids"][i, : len(e.input_ids)].tolist() == e.input_ids
        assert batch["input_ids"][3 + i, : len(e.rejected_ids)].tolist() == e.rejected_ids
    assert batch["ref_logps"].tolist() == [0.0, -1.0, -2.0, -10.0, -11.0, -12.0]
    batcher = Batcher(examples, 2, 0, tokenizer.pad_token_id, "pad")
    micro = batcher.micro_batch(0)
    assert batcher.shape(0) == tuple(micro["input_ids"].shape)  # the cost model's rows: 2 x 2
    real = sum(len(examples[i].input_ids) + len(examples[i].rejected_ids)
               for i in batcher.indices(0))
    assert int(micro["n_tokens"]) == real == int(micro["attention_mask"].sum())


def test_the_losses_follow_the_formulas():
    logps = torch.tensor([-5.0, -7.0, -9.0, -6.0], dtype=torch.float64)  # chosen x2, rejected x2
    ref = torch.tensor([-6.0, -7.5, -8.0, -6.5], dtype=torch.float64)
    lengths = torch.tensor([2.0, 4.0, 3.0, 5.0], dtype=torch.float64)
    losses, chosen, rejected = pair_losses(logps, ref, lengths, DpoConfig(beta=0.2))
    margin = [(1.0 - -1.0), (0.5 - 0.5)]
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.2 * m)) for m in margin])
    assert chosen.tolist() == pytest.approx([0.2, 0.1]) and rejected.tolist() == pytest.approx(
        [-0.2, 0.1])
    ipo, _, _ = pair_losses(logps, ref, lengths, DpoConfig(loss="ipo", beta=0.2))
    expected = [(1.0 / 2 - -1.0 / 3 - 2.5) ** 2, (0.5 / 4 - 0.5 / 5 - 2.5) ** 2]
    assert ipo.tolist() == pytest.approx(expected)


def test_the_sft_weight_adds_the_chosen_answers_mean_token_loss(tokenizer):
    torch.manual_seed(0)
    model = load_model("tiny-llama")[0]
    examples = [encode_preference(tokenizer, p, c, r, 64)
                for p, c, r, _ in preference.builtin_triples(3)]
    batch = pair_batch(examples, tokenizer.pad_token_id)
    batch["target_index"] = target_index(batch["labels"])
    with torch.no_grad():
        logps, lengths, nll, rows = sequence_logps(model, batch)
        batch["ref_logps"] = logps - 0.3  # a reference unlike the policy: a non-trivial DPO loss
        plain = make_loss(DpoConfig())(model, batch)
        mixed = make_loss(DpoConfig(sft_weight=2.0))(model, batch)
    chosen_tokens = int(lengths[:3].sum())
    assert int((rows < 3).sum()) == chosen_tokens  # the term's tokens: the chosen rows' only
    expected = plain + 2.0 * nll[rows < 3].mean()
    assert float(mixed) == pytest.approx(float(expected), rel=1e-6)
    assert float(mixed) > float(plain) + 1.0


@pytest.mark.parametrize("values, message", [
    ({"dpo.beta": 0}, "dpo.beta must be a number > 0"),
    ({"dpo.beta": -0.1}, "dpo.beta must be a number > 0"),
    ({"dpo.beta": "x"}, "dpo.beta must be a number > 0"),
    ({"dpo.loss": "hinge"}, "dpo.loss must be one of sigmoid, ipo"),
    ({"dpo.sft_weight": -1}, "dpo.sft_weight must be a number >= 0"),
    ({"dpo.sft_weight": float("nan")}, "dpo.sft_weight must be a number >= 0"),
    ({"data.task": "preference", "train.batching": "pack"}, "train.batching=pack is not"),
    ({"data.task": "preference", "train.compile": "auto"}, "train.compile=auto is not"),
    ({"data.task": "preference", "dpo.reference": "disabled", "lora.init_from": "x"},
     "dpo.reference=disabled needs method=lora with a new adapter"),
    ({"method": "full", "lora.init_from": "x"}, "lora.init_from starts an adapter"),
])
def test_configs_that_cannot_run_are_refused_in_one_line(values, message):
    with pytest.raises(ValueError, match=message) as err:
        TrialConfig.from_dict(values)
    assert "\n" not in str(err.value)


def test_the_new_fields_leave_an_older_configurations_id_as_it_was():
    # ids recorded before the preference task (9191076): a study resumed across the upgrade
    # still matches its trials' replicates
    assert TrialConfig().config_id() == "ecd46e966778"
    assert TrialConfig.from_dict({"lora.rank": 4, "data.task": "classify"}).config_id() == (
        "ead385629ba1")
    dpo = TrialConfig.from_dict({"data.task": "preference"})
    assert dpo.config_id() != TrialConfig.from_dict({"data.task": "preference",
                                                     "dpo.beta": 0.2}).config_id()
