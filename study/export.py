"""python -m study.export TRIAL_DIR OUT [--merged]: a trial's adapter, or the merged model.

    python -m study.export results/demo/search/a1b2c3d4 exports/a1b2            # PEFT adapter
    python -m study.export results/demo/search/a1b2c3d4 exports/a1b2-merged --merged

Without ``--merged`` the adapter is copied as it is (``adapter_config.json`` and
``adapter_model.safetensors``: loads with ``peft.PeftModel.from_pretrained`` or
``lora_impl.load_adapter``). With ``--merged`` the base model is loaded as the trial loaded it
(``study.trial.models.load_model``), the adapter is loaded into it, merged and stripped
(``lora_impl.unload(merge=True)``), and model and tokenizer are written with ``save_pretrained``:
``AutoModelForCausalLM.from_pretrained(OUT)`` then needs neither this project nor PEFT.

Quantized bases (``quant.bits`` 4 or 8) are dequantized, not refused: the merged model is float32
with ``W = dequant(Q) + s B A``. That is the function the trial trained and evaluated. Merging
into the original float weights instead would add an update learnt against the rounded weights
to unrounded ones, and a re-quantized bitsandbytes checkpoint would round most of the update
away and need bitsandbytes to load. 4-bit exports give the unmerged model's logits up to float
rounding; the 8-bit kernel also quantizes activations, so 8-bit exports agree only to about 1e-2.
The model is larger on disk than the quantized one. ``export.json`` records what was done.

``method=full`` trials have no adapter: ``--merged`` writes the fine-tuned model from the trial's
checkpoint. ``method=base`` trials trained nothing and are refused.

A classify trial's merged export is transformers' ``...ForSequenceClassification`` of its
architecture (the same state-dict keys as ``study.trial.models.classifier``), with ``num_labels``,
``id2label`` and ``label2id`` from the trial's ``labels.json``: it loads with
``AutoModelForSequenceClassification.from_pretrained(OUT)``. Either export's ``export.json`` lists
the label names in the order of the logits.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from lora_impl.io import ADAPTER_FILES, has_adapter
from study import record
from study.cli import OneLineParser
from study.outdir import check_output_dir

# The trial's config under another name: a merged export's own config file is the model's.
TRIAL_CONFIG = "trial_config.json"


class ExportError(ValueError):
    """A trial that cannot be exported as asked (one line for the user)."""


def parse_args(argv: list[str] | None = None):
    """The command line."""
    parser = OneLineParser.for_module("python -m study.export", __doc__)
    parser.add_argument("trial_dir", type=Path, metavar="TRIAL_DIR", help="a trial directory")
    parser.add_argument("out", type=Path, metavar="OUT", help="new output directory")
    parser.add_argument(
        "--merged", action="store_true", help="write the merged model in transformers format"
    )
    return parser.parse_args(argv)


def read_trial_config(trial_dir: Path):
    """(config.json as written, its TrialConfig), or ExportError naming what is wrong."""
    if not record.has_config(trial_dir):
        raise ExportError(f"{trial_dir} is not a trial directory (no {record.CONFIG})")
    try:
        config = record.read_config(trial_dir)
    except record.RecordError as err:
        raise ExportError(f"{err.path} is corrupt ({err.problem})") from None
    from study.config import TrialConfig

    if "method" not in config:  # written by run_trial, config.json always names its method
        raise ExportError(f"{record.config_path(trial_dir)} is not a trial config")
    try:
        return config, TrialConfig.from_dict(config)
    except ValueError as err:
        where = record.config_path(trial_dir)
        raise ExportError(f"{where} is not a valid trial config: {err}") from None


def dequantize_linears(model) -> list[str]:
    """Replace every bitsandbytes linear by the float layer the architecture defines; names.

    GPT-2's projections are transformers ``Conv1D`` (weight stored transposed): the layer type
    is taken from a meta-device copy of the architecture so the saved model loads unchanged.
    """
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    from lora_impl.quant import base_weight, is_conv1d, quant_kind

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(model.config)
    replaced = []
    for name, module in list(model.named_modules()):
        if quant_kind(module) is None:
            continue
        weight = base_weight(module).float()
        out_features, in_features = weight.shape
        has_bias = module.bias is not None
        if is_conv1d(reference.get_submodule(name)):
            new = Conv1D(out_features, in_features)
            new.weight = nn.Parameter(weight.t().contiguous(), requires_grad=False)
        else:
            new = nn.Linear(in_features, out_features, bias=has_bias)
            new.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        if has_bias:
            new.bias = nn.Parameter(module.bias.data.float().clone(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
        replaced.append(name)
    return replaced


def merged_model(trial_dir: Path, cfg):
    """(model, tokenizer, notes): the trial's base with its adapter (or weights) merged in."""
    from lora_impl import load_adapter, unload
    from study.trial.checkpoint import load_trainable_weights
    from study.trial.models import load_model

    quant = cfg.quant
    model, tokenizer = load_model(cfg.model.name, quant)
    notes: dict = {"dequantized_from": None}
    if quant.bits < 16:
        dequantize_linears(model)
        kind = f"{quant.bits}-bit" + (f" {quant.type}" if quant.bits == 4 else " LLM.int8")
        notes["dequantized_from"] = kind
    labels = record.read_labels(trial_dir) if cfg.data.task == "classify" else None
    if labels is not None:
        from study.trial.models.classifier import as_classifier

        model = as_classifier(model, len(labels["labels"]))
    if cfg.method == "lora":
        load_adapter(model, record.adapter_dir(trial_dir))
        unload(model, merge=True)
    else:  # full fine-tuning: the trained weights are the checkpoint's
        checkpoint = record.checkpoint_dir(trial_dir)
        if not checkpoint.is_dir():
            raise ExportError(f"{trial_dir} has no {record.CHECKPOINT}/ to export")
        try:
            load_trainable_weights(model, checkpoint)
        except ValueError as err:
            raise ExportError(str(err)) from None
    if labels is not None:
        model = _transformers_classifier(model, labels["labels"], tokenizer.pad_token_id)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval(), tokenizer, notes


def _transformers_classifier(model, names: list[str], pad_id: int):
    """transformers' sequence classifier holding ``model``'s merged weights and label names."""
    from transformers import AutoModelForSequenceClassification

    config = model.config
    config.num_labels, config.pad_token_id = len(names), pad_id
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    try:
        out = AutoModelForSequenceClassification.from_config(config)
    except ValueError as err:  # an architecture transformers has no classifier class for
        raise ExportError(f"--merged: {str(err).splitlines()[0]}; export the adapter "
                          "without --merged instead") from None
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:
        raise ExportError(f"--merged: transformers' classifier of {config.model_type} does not "
                          f"match ({missing[:2]} missing, {unexpected[:2]} unexpected)")
    return out


def export(trial_dir: str | os.PathLike, out: str | os.PathLike, merged: bool = False) -> Path:
    """Write the trial's adapter (or merged model) to the new directory ``out``; return it.

    Raises:
        ExportError: not a trial, no adapter, a ``base`` trial, or ``out`` is not empty.
    """
    trial_dir, out = Path(trial_dir), Path(out)
    config, cfg = read_trial_config(trial_dir)
    method = cfg.method
    if method == "base":
        name = cfg.model.name
        raise ExportError(f"{trial_dir} is a method=base trial: nothing was trained ({name})")
    if method == "full" and not merged:
        raise ExportError(f"{trial_dir} is full fine-tuning (no adapter): use --merged")
    if method == "lora" and not has_adapter(record.adapter_dir(trial_dir)):
        raise ExportError(
            f"{trial_dir} has no {record.ADAPTER}/ (did the trial reach its first eval?)"
        )
    try:
        check_output_dir(out, "OUT", must_be_empty=True)
    except ValueError as err:
        raise ExportError(str(err)) from None
    status = record.read_status(trial_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_export(trial_dir, tmp, config, cfg, merged, status)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed export leaves nothing behind
        raise
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)  # a crash never leaves a half-written export under OUT
    return out


def _write_export(trial_dir: Path, tmp: Path, config: dict, cfg, merged: bool, status: dict):
    notes: dict = {}
    if merged:
        model, tokenizer, notes = merged_model(trial_dir, cfg)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    else:
        for name in ADAPTER_FILES:
            shutil.copy2(record.adapter_dir(trial_dir) / name, tmp / name)
    (tmp / TRIAL_CONFIG).write_text(json.dumps(config, indent=2))
    what = {
        "trial_dir": str(trial_dir.resolve()),
        "method": cfg.method,
        "merged": merged,
        "model": cfg.model.name,
        "status": status.get("status"),
        "step": status.get("step"),
        **notes,
    }
    if cfg.data.task == "classify":  # the adapter's logits in this order (also id2label merged)
        what["labels"] = (record.read_labels(trial_dir) or {}).get("labels")
    (tmp / "export.json").write_text(json.dumps(what, indent=2))


def main(argv: list[str] | None = None) -> int:
    """Export; bad input -> one line on stderr and exit code 2."""
    args = parse_args(argv)
    try:
        path = export(args.trial_dir, args.out, args.merged)
    except ValueError as err:  # ExportError, or a corrupt adapter from load_adapter
        print(f"study.export: error: {err}", file=sys.stderr)
        return 2
    what = "merged model" if args.merged else "adapter"
    print(f"{what} written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
