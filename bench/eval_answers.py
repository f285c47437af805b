"""Answers read off the loss pass against generating every one: the same answers, less time.

    python -m bench.eval_answers ADAPTER_DIR     # a trained adapter of the bundled model

On the default space's test split (150 skills prompts): the time of ``split_loss`` + ``generate``
(the loss pass, then every prompt generated) against ``loss_and_answers``, and how many answers
agree.
"""

from __future__ import annotations

import sys
import time

from bench.common import machine, machine_line
from lora_impl.io import load_adapter
from study.config import TrialConfig
from study.trial.data import build_data
from study.trial.evaluate import exact_match, generate, loss_and_answers, split_loss
from study.trial.models import load_model


def main() -> None:
    cfg = TrialConfig.from_dict({"data.size": 400, "data.eval_size": 90, "data.test_size": 150})
    model, tok = load_model(cfg.model.name)
    load_adapter(model, sys.argv[1])
    test = build_data(cfg.data, tok).test
    t = time.perf_counter()
    old_loss, old = split_loss(model, test, tok.pad_token_id), generate(model, tok, test, 16)
    old_s = time.perf_counter() - t
    t = time.perf_counter()
    new_loss, new = loss_and_answers(model, tok, test, 16)
    new_s = time.perf_counter() - t
    print(f"Machine: {machine_line(machine())}")
    print(f"loss pass + generate all: {old_s:.1f} s, loss {old_loss:.4f}, exact match "
          f"{exact_match(old, test):.3f}")
    print(f"loss_and_answers:         {new_s:.1f} s, loss {new_loss:.4f}, exact match "
          f"{exact_match(new, test):.3f}")
    print(f"identical answers: {sum(a == b for a, b in zip(old, new))} of {len(test)}")


if __name__ == "__main__":
    main()
