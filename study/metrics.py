"""Metric names, defined once: the trial writes them, the study optimises them, analysis reads them.

This module imports nothing heavy, so ``analysis`` may use it without torch or ray.
"""

from __future__ import annotations

import math
import numbers

# quality: eval split (selection, early stopping) and held-out test split (finished trials only)
EVAL_LOSS, EVAL_PPL, EXACT_MATCH = "eval_loss", "eval_ppl", "exact_match"
TEST_LOSS, TEST_EXACT_MATCH = "test_loss", "test_exact_match"
# classification (data.task=classify): eval split for selection, test split reported only
ACCURACY, F1_MACRO, F1_WEIGHTED = "accuracy", "f1_macro", "f1_weighted"
TEST_ACCURACY, TEST_F1_MACRO = "test_accuracy", "test_f1_macro"
TEST_F1_WEIGHTED = "test_f1_weighted"
F1_BY_CLASS, TEST_F1_BY_CLASS = "f1_by_class", "test_f1_by_class"  # label -> F1 (metrics.json)
TEST_CONFUSION = "test_confusion"  # rows: true label, columns: predicted, in labels.json's order
CLASSIFY_EVAL = (ACCURACY, F1_MACRO, F1_WEIGHTED)
TEST_OF = {EVAL_LOSS: TEST_LOSS, EXACT_MATCH: TEST_EXACT_MATCH, ACCURACY: TEST_ACCURACY,
           F1_MACRO: TEST_F1_MACRO, F1_WEIGHTED: TEST_F1_WEIGHTED}
# preference (data.task=preference): DPO's loss, the rewards beta x (log pi - log ref) of the
# chosen and rejected responses, and the policy's log-probabilities of them (TRL's logs)
DPO_LOSS, REWARD_ACCURACY, REWARD_MARGIN = "dpo_loss", "reward_accuracy", "reward_margin"
CHOSEN_LOGP, REJECTED_LOGP = "chosen_logp", "rejected_logp"
PREFERENCE_EVAL = (DPO_LOSS, REWARD_ACCURACY, REWARD_MARGIN, CHOSEN_LOGP, REJECTED_LOGP)
TEST_OF.update({name: f"test_{name}" for name in PREFERENCE_EVAL})
PREFERENCE_TEST = tuple(TEST_OF[name] for name in PREFERENCE_EVAL)
TRAIN_LOSS = "train_loss"
# resources
PEAK_MEM_MB, START_MEM_MB = "peak_mem_mb", "start_mem_mb"
PEAK_RESERVED_MB = "peak_reserved_mb"  # CUDA only: the caching allocator's peak
TRAIN_TOKENS_PER_S = "train_tokens_per_s"
FWD_MS, BWD_MS, OPT_MS, STEP_MS = "fwd_ms", "bwd_ms", "opt_ms", "step_ms"
TRAINABLE_PARAMS, ADAPTER_MB = "trainable_params", "adapter_mb"
LATENCY_UNMERGED = "latency_ms_per_token_unmerged"
LATENCY_MERGED = "latency_ms_per_token_merged"
# classification: a batch-1 forward of one test text (no decoding), unmerged and merged
LATENCY_EXAMPLE_UNMERGED = "latency_ms_per_example_unmerged"
LATENCY_EXAMPLE_MERGED = "latency_ms_per_example_merged"
LOAD_S, TRAIN_S, EVAL_S, TRIAL_S = "load_s", "train_s", "eval_s", "trial_s"
COMPILE_S = "compile_s"  # torch.compile in this process (train.compile); in trial_s, not train_s
# progress
STEP, TOKENS_SEEN = "step", "tokens_seen"

QUALITY = (EVAL_LOSS, EVAL_PPL, EXACT_MATCH, TEST_LOSS, TEST_EXACT_MATCH, *CLASSIFY_EVAL,
           TEST_ACCURACY, TEST_F1_MACRO, TEST_F1_WEIGHTED, *PREFERENCE_EVAL, *PREFERENCE_TEST)
RESOURCES = (
    PEAK_MEM_MB,
    START_MEM_MB,
    PEAK_RESERVED_MB,
    TRAIN_TOKENS_PER_S,
    FWD_MS,
    BWD_MS,
    OPT_MS,
    STEP_MS,
    TRAINABLE_PARAMS,
    ADAPTER_MB,
    LATENCY_UNMERGED,
    LATENCY_MERGED,
    LATENCY_EXAMPLE_UNMERGED,
    LATENCY_EXAMPLE_MERGED,
    LOAD_S,
    COMPILE_S,
    TRAIN_S,
    EVAL_S,
    TRIAL_S,
)
PROGRESS = (STEP, TOKENS_SEEN)

# Which way is better, for objectives and Pareto fronts.
MAXIMIZE = frozenset({EXACT_MATCH, TEST_EXACT_MATCH, TRAIN_TOKENS_PER_S, *CLASSIFY_EVAL,
                      TEST_ACCURACY, TEST_F1_MACRO, TEST_F1_WEIGHTED,
                      *(name for eval_name in (REWARD_ACCURACY, REWARD_MARGIN, CHOSEN_LOGP)
                        for name in (eval_name, TEST_OF[eval_name]))})


def mode(name: str) -> str:
    """'max' or 'min': the direction in which metric ``name`` improves."""
    return "max" if name in MAXIMIZE else "min"


def number(value, digits: int = 4) -> str:
    """A value as the live table, the summary and the report print it: ``digits`` significant
    digits; a whole number, or one with ``digits`` or more digits before the point, without a
    decimal point or an exponent (rank 8, not 8.0; 123457 tokens/s, not 1.235e+05); "-" for a
    missing value (None, NaN, pandas' NA); anything else (text, a bool) as ``str`` gives it."""
    if value is None or type(value).__name__ == "NAType":  # pandas' NA, without importing pandas
        return "-"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "-"
    if not abs(value) < 1e15 or not (value.is_integer() or abs(value) >= 10**digits):
        return f"{value:.{digits}g}"
    return f"{value:.0f}"
