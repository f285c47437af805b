"""Built-in checkable skills: instructions whose answers can be verified exactly, offline.

    examples = skill_pool(seed=0)        # deterministic, unique prompts, skills round-robin
    is_correct("September 16, 1983.", "September 16, 1983")   # True: normalised comparison

Skills: reformatting an ISO date in words, adding two two-digit numbers, reversing a short word
list. A small instruction-tuned model scores about 0% zero-shot (it answers in sentences and
gets the details wrong); a few hundred examples of LoRA teach it the format and the skill.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "maple",
    "piano",
    "candle",
    "forest",
    "window",
    "silver",
    "garden",
    "rocket",
    "pepper",
    "island",
    "violet",
    "hammer",
    "lemon",
    "desert",
    "falcon",
    "marble",
    "orange",
    "planet",
    "shadow",
    "thunder",
    "velvet",
    "winter",
    "yellow",
    "copper",
    "meadow",
)
SKILLS = ("date", "add", "reverse")


@dataclass(frozen=True)
class Example:
    """One instruction with its exact answer."""

    prompt: str
    response: str
    skill: str


def _date(rng: random.Random) -> Example:
    year, month = rng.randint(1900, 2099), rng.randint(1, 12)
    day = rng.randint(1, DAYS_IN_MONTH[month - 1])
    return Example(
        f"Write the date {year:04d}-{month:02d}-{day:02d} in words, as Month D, YYYY.",
        f"{MONTHS[month - 1]} {day}, {year}",
        "date",
    )


def _add(rng: random.Random) -> Example:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return Example(f"What is {a} + {b}? Answer with the number only.", str(a + b), "add")


def _reverse(rng: random.Random) -> Example:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return Example(
        f"Reverse the order of this list: {', '.join(words)}",
        ", ".join(reversed(words)),
        "reverse",
    )


_GENERATORS = {"date": _date, "add": _add, "reverse": _reverse}


def skill_pool(n: int = 3000, seed: int = 0) -> list[Example]:
    """``n`` distinct examples, skills in round-robin order so every prefix is balanced."""
    rng = random.Random(seed)
    seen: set[str] = set()
    pool: list[Example] = []
    while len(pool) < n:
        skill = SKILLS[len(pool) % len(SKILLS)]
        for _ in range(1000):
            example = _GENERATORS[skill](rng)
            if example.prompt not in seen:
                break
        else:  # pragma: no cover - the spaces are far larger than any pool we draw
            raise RuntimeError(f"skill {skill!r} ran out of distinct examples")
        seen.add(example.prompt)
        pool.append(example)
    return pool


def normalize(text: str) -> str:
    """Lower-case, trim, collapse whitespace, drop surrounding quotes and a final period."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    text = text.strip("\"'` ")
    return text[:-1].rstrip() if text.endswith(".") else text


def could_match(partial: str, reference: str) -> bool:
    """Whether an output that begins with ``partial`` can still be correct (``is_correct``):
    False only when no continuation normalises to the reference (its text so far, normalised
    and without what a continuation's normalisation could drop at its end, is no prefix)."""
    if "\ufffd" in partial:  # a character cut between two tokens: decide at the next one
        return True
    text = re.sub(r"\s+", " ", partial.lower()).lstrip().lstrip("\"'` ")
    return normalize(reference).startswith(text.rstrip("\"'` ."))


def is_correct(output: str, reference: str) -> bool:
    """Exact match after normalisation: formatting noise passes, a wrong detail does not."""
    return normalize(output) == normalize(reference)
