"""A classify trial end to end on a tiny model: files, adapter, resume, base, quant.scheme."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lora_impl import load_adapter
from study import metrics as M
from study import record
from study.config import TrialConfig
from study.trial.models import load_model
from study.trial.models.classifier import as_classifier
from study.trial.run import run_trial
from tests.conftest import tiny_trial

LABELS = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    rows = [{"text": f"{label} item {i} " + "filler " * (i % 4), "label": label}
            for i in range(40) for label in LABELS]
    path = tmp_path_factory.mktemp("news") / "news.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _cfg(news, **overrides):
    return tiny_trial(**{"data.task": "classify", "data.source": str(news), "data.size": 48,
                         "data.eval_size": 24, "data.test_size": 24, "lora.targets": "qkv",
                         "train.steps": 6, "train.lr": 0.01, **overrides})


def test_a_classify_trial_writes_its_metrics_labels_and_a_seq_cls_adapter(tmp_path, news):
    final = run_trial(_cfg(news), out_dir=tmp_path)
    for key in (*M.CLASSIFY_EVAL, M.TEST_ACCURACY, M.TEST_F1_MACRO, M.TEST_F1_WEIGHTED,
                M.LATENCY_EXAMPLE_MERGED, M.LATENCY_EXAMPLE_UNMERGED, M.EVAL_LOSS, M.TEST_LOSS):
        assert final[key] is not None, key
    assert M.EXACT_MATCH not in final and M.LATENCY_MERGED not in final
    assert set(final[M.TEST_F1_BY_CLASS]) == set(LABELS)
    confusion = final[M.TEST_CONFUSION]
    assert sum(map(sum, confusion)) == 24 and [sum(r) for r in confusion] == [8, 8, 8]
    diagonal = sum(confusion[k][k] for k in range(3))
    assert final[M.TEST_ACCURACY] == pytest.approx(diagonal / 24)
    labels = record.read_labels(tmp_path)
    assert labels == {"labels": LABELS, "train_counts": {"alpha": 16, "beta": 16, "gamma": 16}}
    assert all(M.ACCURACY in p for p in record.read_curve(tmp_path)[0])
    # the saved adapter and head, loaded into a fresh classifier, give the trial's test accuracy
    lm, _ = load_model("tiny-llama")
    model = as_classifier(lm, len(LABELS), seed=99)  # another head: the file must replace it
    load_adapter(model, record.adapter_dir(tmp_path))
    from study.trial.classify import quality
    from study.trial.data import build_data

    data = build_data(_cfg(news).data, load_model("tiny-llama")[1])
    again, _ = quality(model, data.test, 0, LABELS, "test")
    assert again[M.TEST_CONFUSION] == confusion


class Interrupt(Exception):
    pass


def test_a_resumed_classify_trial_matches_an_uninterrupted_one(tmp_path, news):
    cfg = _cfg(news, **{"train.steps": 8, "eval.every": 4})
    whole = run_trial(cfg, out_dir=tmp_path / "whole")

    def stop_at_4(metrics, _checkpoint):
        if metrics["step"] == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(cfg, report=stop_at_4, out_dir=tmp_path / "cut")
    torch.manual_seed(4321)
    resumed = run_trial(cfg, resume_from=record.checkpoint_dir(tmp_path / "cut"),
                        out_dir=tmp_path / "cut")
    for key in (M.EVAL_LOSS, M.ACCURACY, M.TEST_CONFUSION, M.TRAIN_LOSS):
        assert resumed[key] == whole[key], key
    assert record.read_curve(tmp_path / "cut")[0] == record.read_curve(tmp_path / "whole")[0]


def test_base_evaluates_an_untrained_head_and_full_trains_everything(tmp_path, news):
    base = run_trial(_cfg(news, method="base"), out_dir=tmp_path / "base")
    assert base[M.TRAINABLE_PARAMS] == 0 and base[M.TEST_ACCURACY] is not None
    full = run_trial(_cfg(news, method="full", **{"train.lr": 1e-3}), out_dir=tmp_path / "full")
    lm, _ = load_model("tiny-llama")
    body = sum(p.numel() for n, p in lm.named_parameters() if not n.startswith("lm_head"))
    # tiny-llama ties lm_head to the embeddings: the body's count is every parameter once
    assert full[M.TRAINABLE_PARAMS] == body + lm.config.hidden_size * len(LABELS)


@pytest.mark.parametrize(("given", "bits", "kind"), [
    ({"quant.scheme": "nf4"}, 4, "nf4"), ({"quant.scheme": "fp4"}, 4, "fp4"),
    ({"quant.scheme": 16}, 16, "nf4"), ({"quant.scheme": "8"}, 8, "nf4"),
    ({"quant.bits": 4, "quant.type": "fp4"}, 4, "fp4"),
    ({"quant.bits": 16, "quant.type": "fp4"}, 16, "nf4"),  # a type 16 bits ignores: one value
])
def test_quant_scheme_resolves_to_bits_and_type(given, bits, kind):
    quant = TrialConfig.from_dict(given).quant
    assert (quant.bits, quant.type) == (bits, kind)
    assert quant.name == (kind if bits == 4 else str(bits)) and quant.scheme is None
    assert TrialConfig.from_dict(TrialConfig.from_dict(given).to_dict()).quant == quant


@pytest.mark.parametrize("given", [{"quant.scheme": "nf4", "quant.bits": 8},
                                   {"quant.scheme": "nf4", "quant.type": "fp4"},
                                   {"quant.scheme": "16", "quant.bits": 4},
                                   {"quant.scheme": "int4"}, {"quant.scheme": True}])
def test_a_scheme_that_disagrees_or_is_unknown_is_refused(given):
    with pytest.raises(ValueError, match="quant.scheme"):
        TrialConfig.from_dict(given)


def test_a_merged_classify_export_loads_as_a_transformers_classifier(tmp_path, news):
    from transformers import AutoModelForSequenceClassification

    from study.export import export
    from study.trial.batches import collate
    from study.trial.data import build_data

    run_trial(_cfg(news), out_dir=tmp_path / "trial")
    out = export(tmp_path / "trial", tmp_path / "merged", merged=True)
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert exported.config.id2label == dict(enumerate(LABELS))
    lm, tok = load_model("tiny-llama")
    ours = as_classifier(lm, len(LABELS))
    load_adapter(ours, record.adapter_dir(tmp_path / "trial"))
    batch = collate(build_data(_cfg(news).data, tok).test[:5], tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(
            exported(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            ours.eval()(batch["input_ids"], batch["attention_mask"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [{}, {"quant.scheme": "nf4"}, {"quant.scheme": "8"},
                                   {"method": "full"}, {"method": "base"}])
def test_the_memory_and_time_models_cover_classify(news, extra):
    """The probes run the classifier (a 4/8-bit body, its fp32 head never quantized) and the
    time model counts its batches: every method and scheme is estimated."""
    import math

    from study.cost.estimate import RUNTIME_MB, estimate_cfg, model_facts
    from study.cost.timing import trial_time

    cfg = _cfg(news, **extra)
    facts, _ = model_facts(cfg, [cfg.lora.targets])
    megabytes = estimate_cfg(cfg, facts, worker_mb=0.0)
    seconds = trial_time(cfg, facts).total_s
    assert math.isfinite(megabytes) and megabytes > RUNTIME_MB
    assert math.isfinite(seconds) and seconds > 0
    if extra.get("method") != "base":  # training keeps activations: more than evaluating
        base = estimate_cfg(_cfg(news, method="base", **{k: v for k, v in extra.items()
                                                         if k != "method"}), facts, 0.0)
        assert megabytes > base
