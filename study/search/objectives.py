"""A study's objectives: which metrics can be one, and which tasks measure each.

    objectives = parse_objectives("accuracy,peak_mem_mb")   # UsageError: one line
    check_objectives_fit_task(objectives, ["classify"])
"""

from __future__ import annotations

from study import metrics as M
from study.config import TrialConfig
from study.search.options import UsageError

SELECTABLE_QUALITY = (M.EVAL_LOSS, M.EVAL_PPL, M.EXACT_MATCH, *M.CLASSIFY_EVAL,
                      *M.PREFERENCE_EVAL)
# start_mem_mb is context, not a goal; peak_reserved_mb exists on CUDA only.
OBJECTIVES = SELECTABLE_QUALITY + tuple(
    m for m in M.RESOURCES if m not in (M.START_MEM_MB, M.PEAK_RESERVED_MB)
)


# Metrics only some tasks measure: exact match needs checkable answers, perplexity and decode
# latency a language model's next-token output, accuracy / F1 and per-text latency a classifier,
# the DPO metrics preference pairs (exact match there: its built-in set, checked by the trial).
_GENERATIVE = ("skills", "lm", "sft", "preference")
ONLY_FOR = {M.EXACT_MATCH: ("skills", "preference"), M.EVAL_PPL: _GENERATIVE,
            **dict.fromkeys(M.PREFERENCE_EVAL, ("preference",)),
            M.LATENCY_UNMERGED: _GENERATIVE, M.LATENCY_MERGED: _GENERATIVE,
            M.LATENCY_EXAMPLE_UNMERGED: ("classify",), M.LATENCY_EXAMPLE_MERGED: ("classify",),
            **dict.fromkeys(M.CLASSIFY_EVAL, ("classify",))}


def check_objectives_fit_task(objectives: list[str], tasks: list[str]) -> None:
    """Every objective is measured by every task the space can run."""
    tasks = tasks or [TrialConfig().data.task]
    for name in objectives:
        allowed = ONLY_FOR.get(name, tasks)
        if other := next((t for t in tasks if t not in allowed), None):
            usable = [m for m in SELECTABLE_QUALITY if other in ONLY_FOR.get(m, (other,))]
            raise UsageError(
                f"--objective {name} needs data.task={' or '.join(allowed)}; this space has "
                f"data.task={other}: use {' or '.join(usable)}"
            )


def parse_objectives(text: str) -> list[str]:
    """--objective's comma-separated metrics, checked (UsageError names the problem)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in OBJECTIVES:
            raise UsageError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    if not names or names[0] not in SELECTABLE_QUALITY:
        raise UsageError(
            f"the first objective is ASHA's stopping metric and must be a quality "
            f"metric ({', '.join(SELECTABLE_QUALITY)}), got {text!r}"
        )
    if len(set(names)) != len(names):
        raise UsageError(f"--objective lists a metric twice: {text!r}")
    return names
