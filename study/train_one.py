"""One trial from the command line, with a progress bar and a final metrics table.

    python -m study.train_one --model smollm2-135m --task skills --method lora --rank 8 \\
        --alpha 16 --targets all-linear --bits 16 --size 400 --steps 150 --out runs/x
    python -m study.train_one --config trial.yaml --lr 1e-4 --out runs/y   # flags override the file

The defaults are the default skills recipe: SmolLM2-135M-Instruct, LoRA rank 8 (alpha 16) on all
linear layers, lr 3e-4 with 10 warm-up steps and cosine decay, 400 examples, 150 steps of batch 8,
the faster of fp32 and bf16 autocast as measured here (--dtype auto). Every field of
study.config.TrialConfig is a flag, ``--section.field`` (``--lora.rank 16``, ``--quant.type
fp4``); the short forms above are aliases.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.cli import OneLineParser, check_threads
from study.outdir import check_output_dir


def parse_args(argv: list[str] | None = None, cls: type | None = None) -> argparse.Namespace:
    """The command line: every TrialConfig field as ``--section.field`` (unset flags stay unset)."""
    from study.config import TrialConfig
    from study.fields import add_config_flags

    parser = OneLineParser.for_module("python -m study.train_one", __doc__)
    parser.add_argument("--config", type=Path, help="YAML or JSON file with TrialConfig fields")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/trial"), help="trial directory (default runs/trial)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    add_config_flags(parser, cls or TrialConfig)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace, cls: type | None = None):
    """File values, then flags, as one dotted mapping; validated by TrialConfig.from_dict."""
    from study.config import TrialConfig, flatten
    from study.fields import given_flags

    cls = cls or TrialConfig
    values: dict = {}
    if args.config is not None:
        values = flatten(_read_config_file(args.config))
    flags = given_flags(args, cls)
    if flags.get("train.epochs") is not None and "train.steps" not in flags:
        values.pop("train.steps", None)  # epochs on the command line replace the file's steps
    values.update(flags)
    return cls.from_dict(values)


def _read_config_file(path: Path) -> dict:
    import json

    import yaml

    from search_spaces import load_yaml

    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path} does not parse: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of TrialConfig fields")
    return data


def metrics_table(metrics: dict) -> str:
    """The final metrics as an aligned two-column table."""
    rows = [(k, v) for k, v in metrics.items() if not isinstance(v, (dict, list))]
    width = max(len(k) for k, _ in rows)
    lines = []
    for key, value in rows:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the trial; bad input -> one line on stderr and exit code 2."""
    args = parse_args(argv)
    try:
        check_threads(args.threads)
        cfg = build_config(args)
        check_output_dir(args.out, "--out")
    except ValueError as err:
        print(f"train_one: error: {err}", file=sys.stderr)
        return 2
    import torch
    from tqdm import tqdm

    from study.trial.run import run_trial
    from study.trial.train import NonFiniteLossError

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    bars: list = []  # made at the first step, so load errors print one clean line
    speed: dict = {}  # training tokens/s (real tokens) as of the latest evaluation

    def on_step(step: int, loss: float) -> None:
        if not bars:
            bars.append(tqdm(total=cfg.train.steps, desc="train", unit="step", dynamic_ncols=True))
        bars[0].n = step
        bars[0].set_postfix(loss=f"{loss:.3f}", **speed, refresh=False)
        bars[0].refresh()

    def on_report(metrics: dict, _checkpoint: str | None) -> None:
        if metrics.get("train_tokens_per_s"):
            speed["tok/s"] = f"{metrics['train_tokens_per_s']:.0f}"
        shown = {
            k: metrics[k]
            for k in ("eval_loss", "exact_match", "accuracy", "f1_macro", "dpo_loss",
                      "reward_accuracy", "train_tokens_per_s")
            if metrics.get(k) is not None
        }
        line = f"step {metrics['step']}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        (bars[0].write if bars else print)(line)

    try:
        final = run_trial(cfg, report=on_report, out_dir=args.out, callbacks=(on_step,))
    except (ValueError, NonFiniteLossError) as err:
        print(f"train_one: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    finally:
        for bar in bars:
            bar.close()
    print(f"\nTrial written to {args.out}\n{metrics_table(final)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
