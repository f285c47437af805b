"""What an evaluation measures of a trial's model: its quality on a split (loss, perplexity,
exact match, the answers shown) and, at the end, its batch-1 latency, unmerged and merged.

    measure = Measure(cfg, model, tokenizer, data, amp)
    metrics, pairs = measure.quality("eval", final=False)   # pairs: (example, answer) shown
    metrics.update(measure.latencies())                     # the last evaluation only

An lm trial has no prompts of its own: its prompts are the first ``LM_PROMPTS`` blocks of a
split, cut after ``LM_PREFIX`` tokens, with the next ``LM_PREFIX`` tokens as the reference.
"""

from __future__ import annotations

import torch

from lora_impl import merge, unmerge
from study import metrics as M
from study.config import TrialConfig
from study.trial import classify
from study.trial.data import Example, TaskData
from study.trial.dpo import pair_metrics
from study.trial.evaluate import (
    early_subset,
    exact_match,
    generate,
    loss_and_answers,
    per_skill,
    perplexity,
    split_loss,
)
from study.trial.resources import classify_latency_ms, decode_latency_ms

LM_PROMPTS = 16  # blocks of an lm split that become continuation prompts
LM_PREFIX = 32  # tokens of a block's start an lm prompt holds (study.cost.workload counts them)


def lm_prompts(examples: list[Example], tokenizer) -> list[Example]:
    """Continuation prompts for LM blocks: the first ``LM_PREFIX`` tokens, the next as reference."""
    return [
        Example(
            input_ids=e.input_ids,
            labels=e.labels,
            prompt_ids=e.input_ids[:LM_PREFIX],
            reference=tokenizer.decode(e.input_ids[LM_PREFIX : 2 * LM_PREFIX]),
            prompt=tokenizer.decode(e.input_ids[:LM_PREFIX]),
        )
        for e in examples[:LM_PROMPTS]
    ]


class Measure:
    """A trial's model measured: its quality on the eval or test split, its latency."""

    def __init__(self, cfg: TrialConfig, model: torch.nn.Module, tokenizer, data: TaskData,
                 amp: torch.dtype | None) -> None:
        self.cfg, self.model, self.tokenizer, self.data, self.amp = cfg, model, tokenizer, data, amp
        self.pad_id = tokenizer.pad_token_id
        self.labels = data.labels
        generative = cfg.data.task != "lm"
        self.eval_prompts = data.eval if generative else lm_prompts(data.eval, tokenizer)
        self.test_prompts = data.test if generative else lm_prompts(data.test, tokenizer)

    def quality(self, split: str, final: bool) -> tuple[dict, list[tuple[Example, str]]]:
        """Loss (and perplexity, exact match) on ``split`` ("eval" or "test"), and generations.

        Before the last evaluation (``final`` False) only the first ``eval.early_prompts``
        prompts are answered (none when 0): the loss is the whole split either way."""
        examples = self.data.eval if split == "eval" else self.data.test
        if self.labels:  # classify: one forward per batch, no generation
            shown = self.cfg.eval.num_examples if split == "eval" or final else 0
            return classify.quality(self.model, examples, self.pad_id, self.labels, split,
                                    self.amp, shown)
        if self.cfg.data.task == "preference":
            return self._preference(split, examples, final)
        prompts = self.eval_prompts if split == "eval" else self.test_prompts
        skills = self.cfg.data.task == "skills"  # every prompt is checked; else a few are shown
        chosen = prompts if skills else prompts[: self.cfg.eval.num_examples]
        if not final:
            chosen = early_subset(chosen, self.cfg.eval.early_prompts)
        new_tokens = self.cfg.eval.max_new_tokens
        if self.cfg.data.task == "lm":  # prompts cut from the blocks: a loss pass, then generate
            loss = split_loss(self.model, examples, self.pad_id, autocast=self.amp)
            outputs = generate(self.model, self.tokenizer, chosen, new_tokens, autocast=self.amp)
        else:
            # examples.json shows the first num_examples answers, the eval split's first
            shown = self.cfg.eval.num_examples - (0 if split == "eval" else len(self.eval_prompts))
            loss, outputs = loss_and_answers(self.model, self.tokenizer, examples, new_tokens,
                                             answer=chosen, autocast=self.amp, judge=skills,
                                             shown=max(0, shown))
        result = {f"{split}_loss": loss}
        if split == "eval":
            result[M.EVAL_PPL] = perplexity(loss)
        if not chosen:
            return result, []
        if skills:
            result[M.EXACT_MATCH if split == "eval" else M.TEST_EXACT_MATCH] = exact_match(
                outputs, chosen
            )
            result[f"{split}_exact_match_by_skill"] = per_skill(outputs, chosen)
        return result, list(zip(chosen, outputs))

    def _preference(self, split: str, examples: list[Example], final: bool
                    ) -> tuple[dict, list[tuple[Example, str]]]:
        """The DPO metrics of ``split`` (``dpo.pair_metrics``); on the built-in set also the
        exact match of the greedy answers to its prompts (the chosen response is the right one),
        before the last evaluation on the first ``eval.early_prompts``, as for skills."""
        result = pair_metrics(self.model, examples, self.pad_id, self.cfg.dpo, self.amp, split)
        if split == "eval":
            result[M.EVAL_PPL] = perplexity(result[M.EVAL_LOSS])
        if self.cfg.data.source != "builtin":  # answers to read, not to score: a few shown
            shown = examples[: self.cfg.eval.num_examples] if split == "eval" else []
            outputs = generate(self.model, self.tokenizer, shown, self.cfg.eval.max_new_tokens,
                               autocast=self.amp) if shown else []
            return result, list(zip(shown, outputs))
        chosen = examples if final else early_subset(examples, self.cfg.eval.early_prompts)
        if not chosen:
            return result, []
        shown = self.cfg.eval.num_examples - (0 if split == "eval" else len(self.data.eval))
        _, outputs = loss_and_answers(self.model, self.tokenizer, chosen,
                                      self.cfg.eval.max_new_tokens, autocast=self.amp,
                                      judge=True, shown=max(0, shown))
        result[M.EXACT_MATCH if split == "eval" else M.TEST_EXACT_MATCH] = exact_match(outputs,
                                                                                       chosen)
        result[f"{split}_exact_match_by_skill"] = per_skill(outputs, chosen)
        return result, list(zip(chosen, outputs))

    def latencies(self) -> dict:
        """Batch-1 latency on the test prompts, unmerged and (LoRA) merged: ms per decoded
        token, or for a classifier ms per classified text."""
        cfg, model, amp = self.cfg, self.model, self.amp
        prompts = self.test_prompts[: cfg.eval.latency_prompts]
        if cfg.data.task == "classify":
            ids = [e.input_ids for e in prompts]
            keys = (M.LATENCY_EXAMPLE_UNMERGED, M.LATENCY_EXAMPLE_MERGED)

            def measure() -> float:
                return classify_latency_ms(model, ids, amp)
        else:
            ids = [e.prompt_ids for e in prompts]
            keys = (M.LATENCY_UNMERGED, M.LATENCY_MERGED)

            def measure() -> float:
                return decode_latency_ms(model, ids, cfg.eval.latency_tokens, self.pad_id, amp)
        unmerged = measure()
        if cfg.method != "lora":
            return dict.fromkeys(keys, unmerged)
        merge(model)
        try:
            merged = measure()
        finally:
            unmerge(model)
        return dict(zip(keys, (unmerged, merged), strict=True))
