"""The memory estimate: its terms follow what the loop holds (the fit to measured peaks is
bench/memory_model.py's, in docs/BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import torch

from study.cost import estimate, host
from study.cost.activations import saved_bytes
from study.cost.estimate import estimate_cfg, largest_batch, model_facts
from study.trial.batches import BatchOrder, collate
from study.trial.data import IGNORE, build_data
from study.trial.models import load_model
from study.trial.train import causal_lm_loss
from tests.conftest import tiny_trial


@pytest.fixture(scope="module")
def facts():
    return model_facts(tiny_trial(), ["qv", "all-linear"])[0]


def test_the_estimate_grows_with_what_it_should(facts, monkeypatch):
    # the stored bytes alone (what a CPU process keeps beyond them: the next test)
    monkeypatch.setattr(host, "HOST_QUANT_BYTES", dict.fromkeys(host.HOST_QUANT_BYTES, 0))
    e = {bits: estimate_cfg(tiny_trial(**{"quant.bits": bits}), facts) for bits in (4, 8, 16)}
    full = estimate_cfg(tiny_trial(method="full"), facts)
    held = {b: estimate.estimate_parts(tiny_trial(**{"quant.bits": b}), facts)[0] for b in e}
    assert held[4] < held[8] < held[16]  # the weights; what bnb keeps for backward differs
    assert e[16] < full
    # a weight that trains costs its gradient and two Adam moments (12 bytes) on top
    lora = estimate_cfg(tiny_trial(**{"lora.targets": "qv", "lora.rank": 1}), facts)
    assert full - lora > 12 * (facts.total_params - 10_000) / 2**20 * 0.9
    bigger = estimate_cfg(tiny_trial(**{"train.batch_size": 16}), facts)
    assert bigger > estimate_cfg(tiny_trial(), facts)
    ranks = [estimate_cfg(tiny_trial(**{"lora.rank": r}), facts) for r in (1, 8, 64)]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    assert estimate_cfg(tiny_trial(method="base"), facts) < e[16]


@pytest.mark.parametrize("bits", [4, 8])
def test_a_quantized_base_on_cpu_adds_what_its_process_keeps_per_weight(facts, monkeypatch,
                                                                        bits):
    cfg = tiny_trial(**{"quant.bits": bits})
    monkeypatch.setattr(host, "HOST_QUANT_BYTES", dict.fromkeys(host.HOST_QUANT_BYTES, 0))
    stored = estimate_cfg(cfg, facts, worker_mb=0.0)
    plain = estimate_cfg(tiny_trial(), facts, worker_mb=0.0)
    monkeypatch.setattr(host, "HOST_QUANT_BYTES", dict.fromkeys(host.HOST_QUANT_BYTES, 3.0))
    kept = estimate_cfg(cfg, facts, worker_mb=0.0)
    assert kept - stored == pytest.approx(3.0 * facts.linear_params / 2**20)
    assert estimate_cfg(tiny_trial(), facts, worker_mb=0.0) == plain  # 16-bit: none quantized


def test_each_distinct_shape_on_cpu_adds_its_share_of_kept_activations(facts, monkeypatch):
    from study.cost.activations import saved_bytes
    from study.cost.workload import workload
    from study.trial.batches import Batcher
    from study.trial.data import build_data

    cfg = tiny_trial(**{"train.batch_size": 3, "train.steps": 7})
    # the distinct shapes are the loop's: brute force over its batch order
    train = build_data(cfg.data, facts.tokenizer).train
    batcher = Batcher(train, 3, cfg.seed, pad_id=0, mode=cfg.train.batching)
    seen = {batcher.shape(k) for k in range(7)}
    shapes = workload(cfg, facts.tokenizer).shapes
    assert {(r, n) for r, n, _ in shapes} == seen and len(shapes) == len(seen)
    monkeypatch.setattr(host, "SHAPE_SHARE", dict.fromkeys(host.SHAPE_SHARE))
    without = estimate_cfg(cfg, facts, worker_mb=0.0)
    monkeypatch.setattr(host, "SHAPE_SHARE", {(c, b): 0.5 for c in ("fp32", "bf16")
                                              for b in (4, 8, 16)})
    graph = saved_bytes(facts.hf_config, cfg, estimate.compute_precision(cfg, facts))
    added = 0.5 * sum(graph.total(*shape) for shape in shapes) / 2**20
    assert estimate_cfg(cfg, facts, worker_mb=0.0) - without == pytest.approx(added)
    assert added > 0


def test_the_largest_batch_is_the_loops(facts):
    cfg = tiny_trial(**{"train.batch_size": 4, "train.steps": 5})
    rows, length, targets = largest_batch(cfg, facts.tokenizer)
    from study.trial.data import build_data

    train = build_data(cfg.data, facts.tokenizer).train
    order, seen = BatchOrder(len(train), 4, cfg.seed), []
    for k in range(5):
        batch = collate([train[i] for i in order.indices(k)], facts.tokenizer.pad_token_id)
        ids = batch["input_ids"]
        seen.append((ids.numel(), *ids.shape, int((batch["labels"][:, 1:] != IGNORE).sum())))
    assert (rows, length, targets) == max(seen)[1:]
    # the time estimate's counts are the same batches'
    from study.cost.workload import workload

    work = workload(cfg, facts.tokenizer)
    assert work.train.count == 5 and work.train.tokens == sum(s[0] for s in seen)
    assert work.train.targets == sum(s[3] for s in seen)
    assert work.train.squares == sum(s[1] * s[2] ** 2 for s in seen)


@pytest.mark.parametrize("targets, amp, variant", [
    ("qv", None, "lora"), ("all-linear", None, "lora"), ("qv", torch.bfloat16, "lora"),
    ("all-linear", torch.bfloat16, "lora"),
    ("all-linear", None, "dora"),  # DoRA keeps more per layer: the probe counts it too
])
def test_the_counted_graph_matches_the_whole_model(targets, amp, variant):
    """study.cost.activations fits small copies of the architecture; the same count on the whole
    tiny model must agree."""
    cfg = tiny_trial(**{"lora.targets": targets, "lora.variant": variant})
    model, tok = load_model(cfg.model.name)
    from study.trial.adapter import prepare as _prepare

    _prepare(model, cfg)
    train = build_data(cfg.data, tok).train
    batch = collate(train[:3], tok.pad_token_id)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, n_targets = causal_lm_loss(model, batch)
    graph = saved_bytes(model.config, cfg, amp)
    counted = graph.total(*batch["input_ids"].shape, n_targets) + graph.casts
    assert counted == pytest.approx(sum(seen.values()), rel=0.02)
    # under bf16 the weights' casts are told apart (held once, no gradient beside them): most
    # of the matrices' bf16 bytes (each linear layer's), none in fp32
    matrices = sum(2 * p.numel() for p in model.parameters() if p.dim() == 2)
    assert (0.5 * matrices < graph.casts <= matrices) if amp else graph.casts == 0


def test_the_logits_term_counts_the_loss_chunk_the_trial_runs_at_most():
    """The training loss holds one chunk of target positions' logits at a time
    (study.trial.logits): beyond a chunk, a target adds its gathered hidden state only."""
    from study.trial.logits import loss_chunk

    cfg = tiny_trial()
    model, _ = load_model(cfg.model.name)
    graph = saved_bytes(model.config, cfg, None)
    assert graph.chunk == loss_chunk(model)
    # fp32 logits at least, per target (the fit's least squares leave ~1e-12 of noise)
    assert graph.per_logits > 4 * model.config.vocab_size - 1e-6
    chunk = int(graph.chunk)
    within = graph.total(1, 8, chunk) - graph.total(1, 8, chunk - 1)
    beyond = graph.total(1, 8, chunk + 1) - graph.total(1, 8, chunk)
    assert within == pytest.approx(graph.per_target + graph.per_logits)
    assert beyond == pytest.approx(graph.per_target) and beyond < within / 10


def test_fixed_precisions_need_no_measurement(facts, monkeypatch):
    monkeypatch.setattr(estimate.precision, "resolve", lambda *a, **k: pytest.fail("measured"))
    bf16, fp32 = (tiny_trial(**{"train.dtype": d}) for d in ("bf16", "fp32"))
    assert estimate.compute_precision(bf16, facts) is torch.bfloat16
    assert estimate.compute_precision(fp32, facts) is None


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_ranks_between_and_beyond_the_probed_two_equal_a_probe_of_their_own(amp, monkeypatch):
    """saved_bytes probes ranks 1 and 2 and interpolates the rest (an adapter adds bytes linear
    in its rank); a probe at rank 8 itself must give the same graph."""
    import dataclasses

    from study.cost import activations

    cfg = tiny_trial(**{"lora.rank": 8, "lora.targets": "all-linear"})
    model, _ = load_model(cfg.model.name)
    interpolated = saved_bytes(model.config, cfg, amp)
    monkeypatch.setattr(activations, "RANKS", (1, 8))  # 8 is now probed, not interpolated
    probed = saved_bytes(model.config, cfg, amp)
    for field in dataclasses.fields(probed):
        assert getattr(interpolated, field.name) == pytest.approx(
            getattr(probed, field.name), rel=1e-6, abs=1.0), field.name
    assert probed.per_token > saved_bytes(model.config, tiny_trial(**{
        "lora.rank": 1, "lora.targets": "all-linear"}), amp).per_token  # the rank is seen


def test_dora_s_estimate_counts_its_magnitudes_and_its_larger_graph(facts):
    from study.cost.estimate import adapter_params

    lora, dora = tiny_trial(), tiny_trial(**{"lora.variant": "dora"})
    outputs = sum(o for _, o in facts.target_dims[lora.lora.targets])
    assert adapter_params(dora, facts) == adapter_params(lora, facts) + outputs
    assert estimate_cfg(dora, facts) > estimate_cfg(lora, facts)


def test_the_gate_judges_the_estimate_plus_its_band_and_the_summary_shows_both(capsys,
                                                                               monkeypatch):
    from analysis.summary import _print_memory_estimate
    from study.cost import estimate as E
    from study.cost.estimate import band, band_of, estimate_cfg, gate_cfg, model_facts

    monkeypatch.setitem(E.BAND, ("lora", 4), 0.2)
    facts = model_facts(tiny_trial(), ["qv", "all-linear"])[0]
    four, sixteen = tiny_trial(**{"quant.bits": 4}), tiny_trial()
    assert band(four) == 0.2 and band_of(four.to_dict()) == 0.2
    assert gate_cfg(four, facts, 0.0) == pytest.approx(1.2 * estimate_cfg(four, facts, 0.0))
    assert gate_cfg(sixteen, facts, 0.0) == pytest.approx(
        (1 + E.BAND["lora", 16]) * estimate_cfg(sixteen, facts, 0.0))
    rows = [{"group": "search", "trial": f"t{i}", "config": c.to_dict(),
             "metrics": {"peak_mem_mb": peak}}
            for i, (c, peak) in enumerate(((four, 100.0), (sixteen, 80.0),
                                           (tiny_trial(method="full"), 50.0)))]
    _print_memory_estimate(rows, lambda config: 90.0, band_of)
    out = capsys.readouterr().out
    assert "90 MB estimated (+20% band: 108 MB gated),    100 MB measured ( -10%)" in out
    # LoRA's -10% and +12.5%; full fine-tuning's +80% apart
    assert "LoRA trials: mean error +1%, mean |error| 11%, range -10% to +12% over 2" in out
    assert "full fine-tuning and base: mean error +80%" in out
