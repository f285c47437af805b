"""Datasets -> token examples, splits and their on-disk cache (batches: ``study.trial.batches``).

    data = build_data(cfg.data, tokenizer)      # cached on disk, safe across processes

Every task gives three disjoint splits: ``test`` (held out, never used for selection), ``eval``
(early stopping and selection) and ``train``; ``data.size`` takes the first ``size`` training
examples, so smaller sizes are subsets of larger ones. Splits do not depend on the trial seed.

- ``lm``: text -> tokens -> packed ``seq_len`` blocks; every token is a target (no padding).
- ``classify``: text -> tokens (truncated to ``seq_len``, the tokenizer's special tokens
  added) and a label id; stratified splits (``study.trial.tasks.labelled``); ``info`` holds
  the label names and the training subset's class counts.
- ``preference``: a prompt with a chosen and a rejected response (``tasks/preference.py``),
  encoded as two ``sft`` pairs sharing one prompt (cut at its start so that the longer response
  fits): the example's ``input_ids`` / ``labels`` are the chosen pair, ``rejected_ids`` /
  ``rejected_labels`` the other.
- ``sft`` / ``skills``: prompt/response pairs rendered with the tokenizer's chat template (or
  the HH ``Human: ... Assistant:`` format without one); the loss covers the response and the
  end-of-turn token only. Labels are built explicitly, never by masking the pad id: on SmolLM2
  pad, eos and ``<|im_end|>`` are one token, and masking by pad id would drop the stop signal.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from study.sections import DataConfig
from study.trial.models import cache_root
from study.trial.tasks import labelled, preference
from study.trial.tasks import skills as skills_task
from study.trial.tasks import text as text_sources

IGNORE = -100
_FORMAT = 4  # bump when the cached layout or rendering changes
SKILL_POOL = 3000
SPLIT_SEED = 1234  # fixed: the same splits for every trial


@dataclass
class Example:
    """One tokenized example; ``prompt_ids``/``reference`` only for generation tasks."""

    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int] | None = None
    reference: str | None = None
    skill: str | None = None
    prompt: str | None = None
    label: int | None = None  # classify: the label id
    rejected_ids: list[int] | None = None  # preference: the rejected response's pair
    rejected_labels: list[int] | None = None
    ref_logps: list[float] | None = None  # preference: the reference's [chosen, rejected]


@dataclass
class TaskData:
    """The three splits of a task, plus what was dropped for being too long."""

    train: list[Example]
    eval: list[Example]
    test: list[Example]
    info: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str] | None:
        """classify: the label names in id order; None for the other tasks."""
        return self.info.get("labels")


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn: ``<|im_end|>`` for ChatML templates, else eos."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_end|>" in template:
        token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if token_id is not None and token_id != tokenizer.unk_token_id:
            return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to end a response with")
    return tokenizer.eos_token_id


def render_prompt(tokenizer, prompt: str) -> str:
    """The text the model sees before its answer: chat template, or the HH format."""
    is_dialogue = prompt.lstrip().startswith("Human:")
    if getattr(tokenizer, "chat_template", None):
        if is_dialogue:
            messages = text_sources.hh_messages(prompt)
        else:
            messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    dialogue = "\n\n" + prompt.strip() if is_dialogue else f"\n\nHuman: {prompt.strip()}"
    return dialogue + "\n\nAssistant:"


def encode_pair(tokenizer, prompt: str, response: str, max_len: int) -> Example | None:
    """Tokens and labels of one pair: prompt masked, response + end-of-turn are targets.

    A pair longer than ``max_len`` loses the start of its prompt; one whose response alone does
    not fit is dropped (None).
    """
    prompt_text = render_prompt(tokenizer, prompt)
    if not getattr(tokenizer, "chat_template", None):
        response = " " + response.strip()
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    response_ids = response_ids + [end_of_turn_id(tokenizer)]
    if len(response_ids) >= max_len:
        return None
    prompt_ids = prompt_ids[-(max_len - len(response_ids)) :]
    return Example(
        input_ids=prompt_ids + response_ids,
        labels=[IGNORE] * len(prompt_ids) + response_ids,
        prompt_ids=prompt_ids,
        reference=response.strip(),
        prompt=prompt,
    )


def encode_preference(tokenizer, prompt: str, chosen: str, rejected: str,
                      max_len: int) -> Example | None:
    """Both pairs of a preference example on one prompt, which loses its start so that the
    longer response fits ``max_len``; None when a response alone does not."""
    chosen_pair = encode_pair(tokenizer, prompt, chosen, 10**9)
    rejected_pair = encode_pair(tokenizer, prompt, rejected, 10**9)
    full_prompt = chosen_pair.prompt_ids
    responses = [p.input_ids[len(full_prompt):] for p in (chosen_pair, rejected_pair)]
    room = max_len - max(map(len, responses))
    if room < 1:
        return None
    prompt_ids = full_prompt[-room:]
    masked = [IGNORE] * len(prompt_ids)
    return Example(input_ids=prompt_ids + responses[0], labels=masked + responses[0],
                   prompt_ids=prompt_ids, reference=chosen_pair.reference, prompt=prompt,
                   rejected_ids=prompt_ids + responses[1], rejected_labels=masked + responses[1])


def lm_blocks(tokenizer, text: str, seq_len: int) -> list[Example]:
    """Pack the text's tokens into consecutive ``seq_len`` blocks (the remainder is dropped)."""
    pieces = re.split(r"(?<=\n\n)", text)  # tokenize paragraph by paragraph, keeping separators
    ids: list[int] = []
    for chunk in tokenizer(pieces, add_special_tokens=False)["input_ids"]:
        ids.extend(chunk)
    return [
        Example(input_ids=ids[i : i + seq_len], labels=ids[i : i + seq_len])
        for i in range(0, len(ids) - seq_len + 1, seq_len)
    ]


def _split(items: list, cfg: DataConfig, what: str) -> tuple[list, list, list]:
    need = cfg.eval_size + cfg.test_size + 1
    if len(items) < need:
        raise ValueError(
            f"{what} has {len(items)} examples; data.eval_size + data.test_size + 1 = {need} "
            "are needed"
        )
    test = items[: cfg.test_size]
    evals = items[cfg.test_size : cfg.test_size + cfg.eval_size]
    return items[cfg.test_size + cfg.eval_size :], evals, test


def _build_classify(cfg: DataConfig, tokenizer) -> TaskData:
    texts, labels, names = labelled.read_labelled(cfg.source, cfg.text_column, cfg.label_column)
    train, evals, test = labelled.stratified_split(labels, cfg.eval_size, cfg.test_size)
    for split, kind in ((evals, "eval"), (test, "test")):
        if absent := labelled.missing_classes([labels[i] for i in train],
                                              [labels[i] for i in split], names):
            raise text_sources.DataSourceError(
                f"classify source {cfg.source!r}: label {absent[0]!r} is in the {kind} split "
                "but not in the training split (too few examples of it); give it more examples "
                "or lower data.eval_size / data.test_size"
            )
    ids = tokenizer([texts[i] for i in (*train, *evals, *test)], truncation=True,
                    max_length=cfg.seq_len)["input_ids"]
    examples = iter(
        Example(input_ids=tokens, labels=[], label=labels[i], prompt=texts[i][:200],
                reference=names[labels[i]])
        for tokens, i in zip(ids, (*train, *evals, *test), strict=True)
    )
    parts = [[next(examples) for _ in split] for split in (train, evals, test)]
    if empty := sum(not e.input_ids for part in parts for e in part):
        raise text_sources.DataSourceError(
            f"classify source {cfg.source!r}: {empty} texts have no tokens")
    return TaskData(*parts, {"labels": names, "examples": len(texts)})  # after de-duplication


def _build_preference(cfg: DataConfig, tokenizer) -> TaskData:
    triples, info = preference.preference_triples(
        cfg.source, cfg.prompt_column, cfg.chosen_column, cfg.rejected_column, SKILL_POOL)
    if cfg.source != "builtin":  # one pair per prompt, shuffled once (as sft: held out stays so)
        first: dict[str, tuple] = {}
        for triple in triples:
            first.setdefault(triple[0], triple)
        info["dropped_repeated_prompt"] = len(triples) - len(first)
        triples = list(first.values())
        random.Random(SPLIT_SEED).shuffle(triples)
    examples = []
    for prompt, chosen, rejected, skill in triples:
        if (example := encode_preference(tokenizer, prompt, chosen, rejected, cfg.seq_len)):
            example.skill = skill
            examples.append(example)
    train, evals, test = _split(examples, cfg, f"task preference (source {cfg.source})")
    return TaskData(train, evals, test, {**info, "dropped_too_long": len(triples) - len(examples)})


def _build(cfg: DataConfig, tokenizer) -> TaskData:
    what = f"task {cfg.task} (source {cfg.source})"
    if cfg.task == "classify":
        return _build_classify(cfg, tokenizer)
    if cfg.task == "preference":
        return _build_preference(cfg, tokenizer)
    if cfg.task == "lm":
        blocks = lm_blocks(tokenizer, text_sources.lm_text(cfg.source), cfg.seq_len)
        train, evals, test = _split(blocks, cfg, what)
        return TaskData(train, evals, test, {"blocks": len(blocks)})
    if cfg.task == "skills":
        if cfg.source != "builtin":
            raise ValueError(f"data.source for task skills must be builtin, got {cfg.source!r}")
        pairs = [(e.prompt, e.response, e.skill) for e in skills_task.skill_pool(SKILL_POOL)]
    else:
        raw = text_sources.sft_pairs(cfg.source)
        # One pair per prompt (the first): dialogue sets repeat prompts, and a prompt in both
        # train and test would make the held-out split not held out.
        first: dict[str, str] = {}
        for prompt, response in raw:
            first.setdefault(prompt, response)
        unique = list(first.items())
        random.Random(SPLIT_SEED).shuffle(unique)
        pairs = [(p, r, None) for p, r in unique]
    examples, dropped = [], 0
    for prompt, response, skill in pairs:
        example = encode_pair(tokenizer, prompt, response, cfg.seq_len)
        if example is None:
            dropped += 1
            continue
        example.skill = skill
        examples.append(example)
    train, evals, test = _split(examples, cfg, what)
    info = {"pairs": len(pairs), "dropped_too_long": dropped}
    if cfg.task == "sft":
        info["dropped_repeated_prompt"] = len(raw) - len(pairs)
    return TaskData(train, evals, test, info)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocab, merges, specials, chat template)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    body += str(getattr(tokenizer, "chat_template", None))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def cache_path(cfg: DataConfig, tokenizer, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the tokenized splits of ``cfg`` (all sizes) are cached."""
    key = json.dumps(
        [
            _FORMAT,
            cfg.task,
            cfg.source,
            cfg.seq_len,
            cfg.eval_size,
            cfg.test_size,
            tokenizer_fingerprint(tokenizer),
            *((cfg.text_column, cfg.label_column) if cfg.task == "classify" else ()),
            *((cfg.prompt_column, cfg.chosen_column, cfg.rejected_column)
              if cfg.task == "preference" else ()),
        ]
    )
    if cfg.source not in ("builtin", *text_sources.HUB_DATASETS, *labelled.HUB):  # a file
        path = Path(cfg.source).expanduser()
        stat = path.stat() if path.exists() else None
        key += f"{path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_root(cache_dir) / "data" / f"{cfg.task}-{digest}.json"


def build_data(cfg: DataConfig, tokenizer, cache_dir: str | os.PathLike | None = None) -> TaskData:
    """The task's splits, with ``train`` cut to ``cfg.size``; built once and cached.

    Concurrent trials are safe: one process builds under a file lock and renames the finished
    file into place, the others wait and read it.

    Raises:
        ValueError: ``cfg.size`` exceeds the training examples available (the message gives the
            count), or the source is missing or malformed.
    """
    from filelock import FileLock

    path = cache_path(cfg, tokenizer, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            data = _load(path)
        else:
            data = _build(cfg, tokenizer)
            _save(data, path)
    available = len(data.train)
    if cfg.size > available:
        raise ValueError(
            f"data.size={cfg.size} exceeds the {available} training examples of task "
            f"{cfg.task} (source {cfg.source}, seq_len {cfg.seq_len}); use at most {available}"
        )
    data.train = data.train[: cfg.size]
    data.info["available_train"] = available
    if cfg.task == "classify":
        names = data.info["labels"]
        if absent := labelled.missing_classes([e.label for e in data.train],
                                              [e.label for e in data.eval + data.test], names):
            raise ValueError(
                f"data.size={cfg.size} leaves label {absent[0]!r} out of the training examples "
                f"of {cfg.source}; use a larger data.size"
            )
        counts = [0] * len(names)
        for e in data.train:
            counts[e.label] += 1
        data.info["train_counts"] = dict(zip(names, counts, strict=True))
    return data


def _save(data: TaskData, path: Path) -> None:
    payload = {
        "train": [asdict(e) for e in data.train],
        "eval": [asdict(e) for e in data.eval],
        "test": [asdict(e) for e in data.test],
        "info": data.info,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> TaskData:
    payload = json.loads(path.read_text())
    splits = {k: [Example(**e) for e in payload[k]] for k in ("train", "eval", "test")}
    return TaskData(**splits, info=payload["info"])
