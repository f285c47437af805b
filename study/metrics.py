"""Metric names, defined once: the trial writes them, the study optimises them, analysis reads them.

This module imports nothing heavy, so ``analysis`` may use it without torch or ray.
"""

from __future__ import annotations

# quality: eval split (selection, early stopping) and held-out test split (finished trials only)
EVAL_LOSS, EVAL_PPL, EXACT_MATCH = "eval_loss", "eval_ppl", "exact_match"
TEST_LOSS, TEST_EXACT_MATCH = "test_loss", "test_exact_match"
TRAIN_LOSS = "train_loss"
# resources
PEAK_MEM_MB, START_MEM_MB = "peak_mem_mb", "start_mem_mb"
PEAK_RESERVED_MB = "peak_reserved_mb"  # CUDA only: the caching allocator's peak
TRAIN_TOKENS_PER_S = "train_tokens_per_s"
FWD_MS, BWD_MS, OPT_MS, STEP_MS = "fwd_ms", "bwd_ms", "opt_ms", "step_ms"
TRAINABLE_PARAMS, ADAPTER_MB = "trainable_params", "adapter_mb"
LATENCY_UNMERGED = "latency_ms_per_token_unmerged"
LATENCY_MERGED = "latency_ms_per_token_merged"
LOAD_S, TRAIN_S, EVAL_S, TRIAL_S = "load_s", "train_s", "eval_s", "trial_s"
# progress
STEP, TOKENS_SEEN = "step", "tokens_seen"

QUALITY = (EVAL_LOSS, EVAL_PPL, EXACT_MATCH, TEST_LOSS, TEST_EXACT_MATCH)
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
    LOAD_S,
    TRAIN_S,
    EVAL_S,
    TRIAL_S,
)
PROGRESS = (STEP, TOKENS_SEEN)

# Which way is better, for objectives and Pareto fronts.
MAXIMIZE = frozenset({EXACT_MATCH, TEST_EXACT_MATCH, TRAIN_TOKENS_PER_S})


def mode(name: str) -> str:
    """'max' or 'min': the direction in which metric ``name`` improves."""
    return "max" if name in MAXIMIZE else "min"
