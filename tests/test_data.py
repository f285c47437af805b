"""Tasks and data: LM blocks, SFT masking, skills, splits, nested sizes, the shared cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from study.config import DataConfig
from study.trial.batches import BatchOrder, collate
from study.trial.data import (
    IGNORE,
    build_data,
    cache_path,
    encode_pair,
    end_of_turn_id,
    lm_blocks,
)
from study.trial.models import load_model, tiny_tokenizer
from study.trial.tasks import skills
from study.trial.tasks.text import hh_messages, hh_pair, to_pair

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_lm_blocks_have_the_right_length_and_no_padding(tok):
    blocks = lm_blocks(tok, "The quick brown fox. " * 200, seq_len=32)
    assert len(blocks) == (len("The quick brown fox. " * 200)) // 32  # one byte per token
    assert all(len(b.input_ids) == 32 and b.labels == b.input_ids for b in blocks)
    batch = collate(blocks[:4], tok.pad_token_id)
    assert (batch["labels"] != IGNORE).all() and batch["attention_mask"].all()


def test_sft_masking_token_by_token(tok):
    example = encode_pair(tok, "Say hi", "hi!", max_len=128)
    prompt_text = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert tok.decode(example.input_ids[:n_prompt]) == prompt_text
    assert example.labels[:n_prompt] == [IGNORE] * n_prompt
    response = example.input_ids[n_prompt:]
    assert example.labels[n_prompt:] == response  # every response token is a target
    assert tok.decode(response[:-1]) == "hi!"
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    # the end-of-turn token is a target even though it is also the pad token
    assert response[-1] == eot == tok.pad_token_id and example.labels[-1] == eot
    batch = collate([example, encode_pair(tok, "Say a longer thing", "ok", 128)], tok.pad_token_id)
    row = batch["labels"][0]
    assert (
        row[len(example.input_ids) - 1] == eot and (row[len(example.input_ids) :] == IGNORE).all()
    )


def test_hh_format_without_chat_template(tok):
    plain = tiny_tokenizer()
    plain.chat_template = None
    example = encode_pair(plain, "Human: hello\n\nAssistant: hi\n\nHuman: bye", "ciao", 256)
    text = plain.decode(example.input_ids)
    assert text == "\n\nHuman: hello\n\nAssistant: hi\n\nHuman: bye\n\nAssistant: ciao<|im_end|>"
    n_target = sum(label != IGNORE for label in example.labels)
    assert n_target == len(" ciao") + 1
    assert end_of_turn_id(plain) == plain.eos_token_id


def test_long_pairs_keep_the_response():
    tok = tiny_tokenizer()
    example = encode_pair(tok, "x" * 500, "answer", max_len=64)
    assert len(example.input_ids) == 64 and tok.decode(example.input_ids[-7:-1]) == "answer"
    assert encode_pair(tok, "q", "y" * 100, max_len=64) is None


def test_hh_and_alpaca_records():
    chosen = "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: And 3+3?\n\nAssistant: 6"
    prompt, response = hh_pair(chosen)
    assert response == "6" and prompt.endswith("Human: And 3+3?")
    assert [m["role"] for m in hh_messages(prompt)] == ["user", "assistant", "user"]
    assert to_pair({"instruction": "Add", "input": "2 and 3", "output": "5"}) == (
        "Add\n\n2 and 3",
        "5",
    )
    assert to_pair({"unrelated": 1}) is None


def test_skills_are_deterministic_per_seed_and_balanced():
    a, b = skills.skill_pool(90, seed=0), skills.skill_pool(90, seed=0)
    assert a == b and a != skills.skill_pool(90, seed=1)
    assert len({e.prompt for e in a}) == 90
    assert [e.skill for e in a[:6]] == ["date", "add", "reverse"] * 2


def test_checker_accepts_references_and_rejects_near_misses():
    for e in skills.skill_pool(60):
        assert skills.is_correct(e.response, e.response)
        assert skills.is_correct(f"  {e.response}. ", e.response)
    assert skills.is_correct("september 16, 1983", "September 16, 1983")
    for wrong in ("September 6, 1983", "September 16 1983", "1983-09-16", "Sept 16, 1983"):
        assert not skills.is_correct(wrong, "September 16, 1983")
    assert not skills.is_correct("86", "85") and not skills.is_correct("The answer is 85", "85")
    assert not skills.is_correct("stone, apple, river", "stone, river, apple")


def test_splits_are_disjoint_and_sizes_nested(tok):
    small = build_data(DataConfig(size=50, eval_size=60, test_size=60), tok)
    large = build_data(DataConfig(size=200, eval_size=60, test_size=60), tok)
    assert [e.prompt for e in small.train] == [e.prompt for e in large.train[:50]]
    prompts = [{e.prompt for e in split} for split in (large.train, large.eval, large.test)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    by_skill = [sum(e.skill == s for e in large.eval) for s in skills.SKILLS]
    assert by_skill == [20, 20, 20]
    lm = build_data(DataConfig(task="lm", size=20, seq_len=64, eval_size=10, test_size=10), tok)
    assert len(lm.train) == 20 and all(len(e.input_ids) == 64 for e in lm.test)


def test_default_exact_match_splits_hold_50_prompts_per_skill(tok):
    data = build_data(DataConfig(), tok)  # the defaults every trial starts from
    for split in (data.eval, data.test):
        assert [sum(e.skill == s for e in split) for s in skills.SKILLS] == [50, 50, 50]


def test_too_large_a_size_names_the_available_count(tok):
    available = build_data(DataConfig(size=1), tok).info["available_train"]
    with pytest.raises(ValueError, match=f"exceeds the {available} training examples"):
        build_data(DataConfig(size=available + 1), tok)


def test_missing_sources_are_clear_errors(tok):
    with pytest.raises(ValueError, match="not a built-in name or an existing file"):
        build_data(DataConfig(task="lm", source="nope.txt"), tok)
    with pytest.raises(ValueError, match="could not load hh-rlhf"):
        build_data(DataConfig(task="sft", source="hh-rlhf"), tok)


def test_local_sft_jsonl(tmp_path, tok):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"instruction": f"Repeat {i}", "output": str(i)}) + "\n" for i in range(40)
        )
    )
    data = build_data(
        DataConfig(task="sft", source=str(path), size=20, eval_size=10, test_size=10), tok
    )
    assert len(data.train) == 20 and data.train[0].reference.isdigit()


def test_sft_splits_share_no_prompt_when_the_source_repeats_prompts(tmp_path, tok):
    path = tmp_path / "repeats.jsonl"
    records = [{"instruction": f"Say {i % 30}", "output": f"{i}"} for i in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = build_data(
        DataConfig(task="sft", source=str(path), size=10, eval_size=10, test_size=10), tok
    )
    prompts = [{e.prompt for e in split} for split in (data.train, data.eval, data.test)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert data.info["dropped_repeated_prompt"] == 30
    assert {e.reference for e in data.train + data.eval + data.test} <= {str(i) for i in range(30)}


def test_two_processes_build_one_cache_at_once(tmp_path):
    code = (
        "import json, sys\n"
        "from study.config import DataConfig\n"
        "from study.trial.data import build_data\n"
        "from study.trial.models import tiny_tokenizer\n"
        "cfg = DataConfig(size=10, seq_len=100)\n"
        "d = build_data(cfg, tiny_tokenizer(), cache_dir=sys.argv[1])\n"
        "print(json.dumps([e.input_ids for e in d.eval[:5]]))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert outs[0][0] == outs[1][0]
    files = list((tmp_path / "data").glob("*.json"))
    assert len(files) == 1 and not list((tmp_path / "data").glob(".*.json.*"))
    json.loads(files[0].read_text())  # complete, valid JSON
    assert files[0] == cache_path(DataConfig(size=10, seq_len=100), tiny_tokenizer(), tmp_path)


def test_batch_order_is_seeded_and_covers_each_epoch_once():
    order = BatchOrder(10, 4, seed=3)
    stream = [i for k in range(5) for i in order.indices(k)]  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream == [i for k in range(5) for i in BatchOrder(10, 4, seed=3).indices(k)]
    assert stream != [i for k in range(5) for i in BatchOrder(10, 4, seed=4).indices(k)]


def test_tiny_model_and_tokenizer_agree_on_vocab():
    model, tok = load_model("tiny-qwen2")
    assert model.config.vocab_size == len(tok)
