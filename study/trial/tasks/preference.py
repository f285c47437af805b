"""Preference pairs for DPO: a prompt, the chosen response and the rejected one.

    triples, info = preference_triples("builtin", "prompt", "chosen", "rejected")

Sources:
- ``builtin``: the skills task (``study.trial.tasks.skills``), same prompts in the same order, so
  its splits are the skills task's; chosen is the correct answer, rejected a plausible wrong one
  (``wrong_answer``: a neighbouring month or day, a sum off by one or ten, a misordered
  reversal), drawn from a generator seeded by the example's position: deterministic.
- ``hh-rlhf``: Anthropic's HH-RLHF through ``datasets``. Its two transcripts share the dialogue up
  to the last assistant turn: split there (``hh_triple``); a row that does not split so, or whose
  two responses are equal, is dropped and counted, never an error for the whole set.
- a local ``.csv`` / ``.jsonl`` / ``.parquet`` with the three columns (``data.prompt_column``, ...):
  a missing column, an empty cell or a row whose chosen equals its rejected is an error naming it.
"""

from __future__ import annotations

import random

from study.trial.tasks import skills
from study.trial.tasks.labelled import SUFFIXES, blank, read_table
from study.trial.tasks.text import DataSourceError, hub_split

Triple = tuple[str, str, str, "str | None"]  # prompt, chosen, rejected, skill
TURN = "\n\nAssistant:"
RECIPE_SEED = 4321  # the wrong answers' generator: seed + the example's position in the pool


def wrong_answer(example: skills.Example, rng: random.Random) -> str:
    """A plausible wrong answer to a skills example: near the right one, never equal to it."""
    if example.skill == "add":
        return str(int(example.response) + rng.choice((-10, -1, 1, 10)))
    if example.skill == "reverse":
        words = example.response.split(", ")
        if rng.random() < 0.5:  # the list as given, not reversed
            return ", ".join(reversed(words))
        i = rng.randrange(len(words) - 1)  # two neighbours swapped
        words[i], words[i + 1] = words[i + 1], words[i]
        return ", ".join(words)
    month_name, day_text, year = example.response.replace(",", "").split()
    month, day = skills.MONTHS.index(month_name) + 1, int(day_text)
    if rng.random() < 0.5:  # a neighbouring month, the day kept where it exists
        month = (month - 1 + rng.choice((-1, 1))) % 12 + 1
        day = min(day, skills.DAYS_IN_MONTH[month - 1])
    else:  # a neighbouring day of the same month
        last = skills.DAYS_IN_MONTH[month - 1]
        day = day + 1 if day < last and (day == 1 or rng.random() < 0.5) else day - 1
    wrong = f"{skills.MONTHS[month - 1]} {day}, {year}"
    return wrong if wrong != example.response else f"{skills.MONTHS[month % 12]} {day}, {year}"


def builtin_triples(n: int) -> list[Triple]:
    """The first ``n`` skills examples with a wrong answer each (the module's recipe)."""
    return [(e.prompt, e.response, wrong_answer(e, random.Random(RECIPE_SEED + i)), e.skill)
            for i, e in enumerate(skills.skill_pool(n))]


def hh_triple(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(the shared dialogue before the last assistant turn, the chosen and the rejected turn)
    of an HH-RLHF row, or None when the transcripts do not differ in that last turn alone."""
    shared = chosen[: next((i for i, (a, b) in enumerate(zip(chosen, rejected))
                            if a != b), min(len(chosen), len(rejected)))]
    cut = shared.rfind(TURN)
    if cut < 0:
        return None
    prompt = chosen[:cut].strip()
    answers = chosen[cut + len(TURN):].strip(), rejected[cut + len(TURN):].strip()
    if (not prompt.startswith("Human:") or not all(answers) or answers[0] == answers[1]
            or any("\n\nHuman:" in a or TURN in a for a in answers)):
        return None
    return prompt, *answers


def _hh(source: str) -> tuple[list[Triple], dict]:
    rows = hub_split(source, "train") + hub_split(source, "test")
    triples = [(*t, None) for t in (hh_triple(r["chosen"], r["rejected"]) for r in rows) if t]
    return triples, {"rows": len(rows), "dropped_unsplit_or_equal": len(rows) - len(triples)}


def _local(source: str, columns: tuple[str, str, str]) -> tuple[list[Triple], dict]:
    if not source.lower().endswith(SUFFIXES):
        raise DataSourceError(f"preference source {source!r}: use builtin, hh-rlhf or a "
                              f"{', '.join(SUFFIXES)} file")
    frame = read_table(source, "preference source")
    if missing := [c for c in columns if c not in frame.columns]:
        raise DataSourceError(
            f"preference source {source!r} has no column {missing[0]!r} (columns: "
            f"{', '.join(map(str, frame.columns))}); name yours with data.prompt_column, "
            "data.chosen_column, data.rejected_column")
    triples = []
    for row, values in enumerate(frame[list(columns)].itertuples(index=False), 1):
        if empty := next((c for c, v in zip(columns, values, strict=True) if blank(v)), None):
            raise DataSourceError(f"preference source {source!r}, row {row}: empty {empty!r}")
        prompt, chosen, rejected = (str(v) for v in values)
        if chosen.strip() == rejected.strip():
            raise DataSourceError(f"preference source {source!r}, row {row}: the chosen response "
                                  "equals the rejected one (nothing to prefer)")
        triples.append((prompt, chosen, rejected, None))
    return triples, {"rows": len(frame)}


def preference_triples(source: str, prompt_column: str, chosen_column: str,
                       rejected_column: str, pool: int) -> tuple[list[Triple], dict]:
    """The source's (prompt, chosen, rejected, skill) in source order, and what was dropped;
    ``pool``: how many the built-in set makes."""
    if source == "builtin":
        return builtin_triples(pool), {"rows": pool}
    if source == "hh-rlhf":
        return _hh(source)
    return _local(source, (prompt_column, chosen_column, rejected_column))
