"""Raw data sources: text for language modelling, prompt/response pairs for SFT.

LM sources: ``builtin`` (CPython's own ``pydoc_data`` reference topics: ~465k characters of real
English technical prose, always installed), ``wikitext-2`` (``wikitext-2-raw-v1`` through
``datasets``, needs the hub), or a local ``.txt`` / ``.jsonl`` (field ``text``) / ``.parquet``.

SFT sources: ``hh-rlhf`` (Anthropic/hh-rlhf ``chosen`` dialogues, split at the last
``Assistant:`` turn), ``alpaca`` (tatsu-lab/alpaca ``instruction`` / ``input`` / ``output``), both
through ``datasets``; or a local ``.jsonl`` in either shape (or with ``prompt`` / ``response``).
"""

from __future__ import annotations

import json
from pathlib import Path

HUB_DATASETS = {
    "wikitext-2": ("wikitext", "wikitext-2-raw-v1"),
    "hh-rlhf": ("Anthropic/hh-rlhf", None),
    "alpaca": ("tatsu-lab/alpaca", None),
}


class DataSourceError(ValueError):
    """A data source that does not exist, cannot be read, or has the wrong shape."""


def hub_split(name: str, split: str) -> list[dict]:
    path, config = HUB_DATASETS[name]
    try:
        import datasets

        return list(datasets.load_dataset(path, config, split=split))
    except Exception as err:  # datasets raises many types for offline / missing
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataSourceError(f"could not load {name} ({path}) through datasets: {first}") from None


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataSourceError(f"{path}:{lineno}: not JSON ({err.msg})") from None
    return records


def local_file(source: str) -> Path:
    """The existing local file ``source`` names (DataSourceError if there is none)."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataSourceError(f"data source {source!r} is not a built-in name or an existing file")
    return path


def lm_text(source: str) -> str:
    """The whole text of an LM source (documents joined by blank lines)."""
    if source == "builtin":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    if source == "wikitext-2":
        return "".join(
            r["text"]
            for split in ("train", "validation", "test")
            for r in hub_split(source, split)
        )
    path = local_file(source)
    if path.suffix == ".txt":
        return path.read_text()
    if path.suffix == ".jsonl":
        records = _read_jsonl(path)
    elif path.suffix == ".parquet":
        import pandas as pd

        records = pd.read_parquet(path).to_dict("records")
    else:
        raise DataSourceError(f"LM source {source!r}: use a .txt, .jsonl or .parquet file")
    if not records or "text" not in records[0]:
        raise DataSourceError(f"LM source {source!r} needs records with a 'text' field")
    return "\n\n".join(str(r["text"]) for r in records)


def hh_pair(chosen: str) -> tuple[str, str] | None:
    """(dialogue up to the last Assistant turn, that turn's text) from an HH-RLHF record."""
    head, sep, answer = chosen.rpartition("\n\nAssistant:")
    if not sep or not answer.strip():
        return None
    return head.strip(), answer.strip()


def to_pair(record: dict) -> tuple[str, str] | None:
    """A prompt/response pair from an HH (``chosen``), Alpaca or prompt/response record."""
    if "chosen" in record:
        return hh_pair(record["chosen"])
    if "instruction" in record and "output" in record:
        prompt = record["instruction"]
        if record.get("input"):
            prompt = f"{prompt}\n\n{record['input']}"
        return prompt, record["output"]
    if "prompt" in record and "response" in record:
        return record["prompt"], record["response"]
    return None


def sft_pairs(source: str) -> list[tuple[str, str]]:
    """All usable prompt/response pairs of an SFT source, in source order."""
    if source in ("hh-rlhf", "alpaca"):
        records = hub_split(source, "train") + (
            hub_split(source, "test") if source == "hh-rlhf" else []
        )
    else:
        path = local_file(source)
        if path.suffix != ".jsonl":
            raise DataSourceError(f"SFT source {source!r}: use a .jsonl file")
        records = _read_jsonl(path)
    pairs = [p for p in map(to_pair, records) if p is not None]
    if not pairs:
        raise DataSourceError(
            f"SFT source {source!r} has no records with chosen, instruction/output or "
            "prompt/response fields"
        )
    return pairs


def hh_messages(prompt: str) -> list[dict]:
    """An HH dialogue prefix ('Human: ... Assistant: ... Human: ...') as chat messages."""
    messages = []
    for chunk in ("\n\n" + prompt).split("\n\nHuman:")[1:]:
        human, _, assistant = chunk.partition("\n\nAssistant:")
        messages.append({"role": "user", "content": human.strip()})
        if assistant.strip():
            messages.append({"role": "assistant", "content": assistant.strip()})
    return messages or [{"role": "user", "content": prompt}]
