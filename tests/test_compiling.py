"""train.compile: on / off as asked; auto by timed steps (faster, and repaid in the planned steps),
cached per machine and workload, recorded in env.json, metrics.json, the live table and the summary.

The rule is tested with a fake probe (no compile); one slow test compiles a tiny model for real.
"""

from __future__ import annotations

import json

import pytest
import torch

from study.config import TrialConfig
from study.trial import compile_cache, compiling
from study.trial.train import batch_loss
from tests.conftest import tiny_trial

CPU = torch.device("cpu")


def compiled_fn(model, batch):
    """Stands for torch.compile(batch_loss)."""
    return batch_loss(model, batch)


class FakeProbe:
    """compiling.Probe with set timings; ``calls`` lists what was measured."""

    def __init__(self, eager=100.0, compiled=50.0, compile_s=10.0, floor=1.0, fails=False):
        self.eager, self.compiled, self.compile_s, self.floor = eager, compiled, compile_s, floor
        self.fails, self.calls, self.loss = fails, [], batch_loss

    def eager_ms(self):
        self.calls.append("eager")
        return self.eager

    def floor_s(self):
        self.calls.append("floor")
        return self.floor

    def compile(self):
        self.calls.append("compile")
        if self.fails:
            raise RuntimeError("BackendCompilerFailed: no C++ compiler\nthe rest of the trace")
        return compiled_fn, self.compile_s

    def step_ms(self, fn, warm_up=True):
        assert fn is compiled_fn and not warm_up  # the compile's pass warmed it up
        self.calls.append("compiled")
        return self.compiled


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """resolve("auto", ...) with the tests' own cache and no $LORA_STUDY_COMPILE_AUTO."""
    monkeypatch.delenv(compiling.ENV_AUTO, raising=False)
    cache = tmp_path / "compile.json"

    def resolve(probe, micro_steps=1000, key="k", asked="auto"):
        return compiling.resolve(asked, probe, key, "floor", micro_steps, cache)

    resolve.cache = cache
    return resolve


@pytest.mark.parametrize(
    ("probe", "steps", "chosen", "why", "calls"),
    [
        # 50 ms saved x 1000 micro-batches = 50 s > the 10 s compile
        (FakeProbe(), 1000, "on", "more than the 10 s compile", ["eager", "floor", "compile",
                                                                 "compiled"]),
        # within the tie margin: eager
        (FakeProbe(compiled=97.0), 1000, "off", "not faster by more than 5%", ["eager", "floor",
                                                                               "compile",
                                                                               "compiled"]),
        # faster, but 100 micro-batches save 5 s, less than the compile
        (FakeProbe(), 100, "off", "less than the 10 s compile", ["eager", "floor", "compile",
                                                                 "compiled"]),
        # 5 x 100 ms = 0.5 s of training: no compile (>= the 1 s floor) can repay itself
        (FakeProbe(), 5, "off", "no compile can repay itself", ["eager", "floor"]),
    ],
)
def test_auto_compiles_only_where_faster_and_repaid(auto, probe, steps, chosen, why, calls):
    out = auto(probe, micro_steps=steps)
    choice = out.choice
    assert (choice.asked, choice.chosen) == ("auto", chosen) and why in choice.reason
    assert probe.calls == calls and not choice.cached
    assert out.loss_fn is (compiled_fn if chosen == "on" else batch_loss)
    # this process compiled the floor's graph, and the model's where it got that far
    assert out.compile_s == (11.0 if "compile" in calls else 1.0)
    assert choice.eager_ms == 100.0 and choice.floor_s == 1.0 and choice.micro_steps == steps
    assert json.loads(json.dumps(choice.record())) == choice.record()  # env.json can hold it


def test_the_figures_are_cached_and_the_verdict_follows_the_planned_steps(auto):
    first = auto(FakeProbe())
    again_probe = FakeProbe()
    again = auto(again_probe)
    # a cached "compile" verdict: nothing measured, but this process compiles for its training
    assert again_probe.calls == ["compile"] and again.choice.cached
    assert again.choice.chosen == first.choice.chosen == "on" and again.loss_fn is compiled_fn
    assert (again.choice.compiled_ms, again.choice.compile_s) == (50.0, 10.0)
    short = FakeProbe()
    assert auto(short, micro_steps=100).choice.chosen == "off" and short.calls == []
    other = FakeProbe()
    auto(other, key="another model")  # measured again; the machine's floor is not
    assert other.calls == ["eager", "compile", "compiled"]
    assert set(json.loads(auto.cache.read_text())) == {"k", "another model", "floor"}


def test_a_model_compiled_here_for_another_workload_bounds_what_a_short_trial_measures(auto):
    """A study of one model over quantizations and methods: once one workload's compile is
    measured, a trial shorter than it measures no compile (nor the floor)."""
    def key(bits, model="smollm2-135m", machine="EPYC"):
        return compile_cache.cache_key(CPU, 2, model, "lora", bits, "skills").replace(
            json.dumps(compile_cache.cpu_name()), json.dumps(machine))

    auto(FakeProbe(compile_s=60.0), key=key("16"))  # measured: a 60 s compile
    probe = FakeProbe()
    out = auto(probe, micro_steps=500, key=key("nf4"))  # 500 x 100 ms = 50 s <= 60 s
    assert out.choice.chosen == "off" and probe.calls == ["eager"]
    assert "every compile of this model measured here" in out.choice.reason
    for other in (key("nf4", model="tiny-llama"), key("nf4", machine="Xeon")):
        probe = FakeProbe()
        auto(probe, micro_steps=500, key=other)  # another model, another machine: measured
        assert "compile" in probe.calls
    probe = FakeProbe()
    auto(probe, micro_steps=700, key=key("8"))  # 70 s of training: it might repay, measured
    assert probe.calls == ["eager", "compile", "compiled"]


def test_figures_measured_for_the_whole_loss_bound_nothing():
    """Keys written before the decoder blocks compiled on their own (no ``COMPILES`` part) hold
    the whole loss's compile, 302 s for the bundled model here: not a bound of a block's."""
    mine = compile_cache.cache_key(CPU, 2, "smollm2-135m", "lora", "16", "skills")
    parts = json.loads(mine)
    parts.remove(compile_cache.COMPILES)
    old = {json.dumps(parts[:4] + [2, "smollm2-135m", "full", "16", "skills"]):
           {"eager_ms": 3897.2, "compile_s": 301.8, "compiled_ms": 3663.6}}
    assert compile_cache.model_bound(old, mine) == 0.0
    new = json.dumps(json.loads(mine)[:-3] + ["full", "16", "skills"])
    assert compile_cache.model_bound({new: old.popitem()[1]}, mine) == 301.8


def test_a_cached_eager_verdict_compiles_nothing(auto):
    auto(FakeProbe(compiled=99.0))
    probe = FakeProbe(compiled=99.0)
    out = auto(probe)
    assert out.choice.chosen == "off" and probe.calls == [] and out.compile_s == 0.0


@pytest.mark.parametrize("text", ["{not json", "[1]", '{"k": {"eager_ms": -1}}',
                                  '{"k": {"eager_ms": 5, "compile_s": 1}}', ""])
def test_a_damaged_cache_is_measured_again(auto, text):
    auto.cache.write_text(text)
    probe = FakeProbe()
    assert auto(probe).choice.chosen == "on" and "eager" in probe.calls
    assert "k" in json.loads(auto.cache.read_text())


def test_on_and_off_are_honoured_without_measuring(auto, monkeypatch):
    monkeypatch.setenv(compiling.ENV_AUTO, "off")  # it concerns auto only
    off, on = FakeProbe(), FakeProbe(compiled=500.0)  # on compiles even where slower
    assert auto(off, asked="off").loss_fn is batch_loss and off.calls == []
    out = auto(on, asked="on")
    assert (out.choice.chosen, out.loss_fn, out.compile_s) == ("on", compiled_fn, 10.0)
    assert on.calls == ["compile"] and not auto.cache.exists()


def test_the_environment_switch_makes_auto_measure_nothing(auto, monkeypatch):
    monkeypatch.setenv(compiling.ENV_AUTO, "off")
    probe = FakeProbe()
    out = auto(probe)
    assert out.choice.chosen == "off" and compiling.ENV_AUTO in out.choice.reason
    assert probe.calls == [] and not auto.cache.exists()
    monkeypatch.setenv(compiling.ENV_AUTO, "sometimes")
    with pytest.raises(ValueError, match="LORA_STUDY_COMPILE_AUTO must be off or unset"):
        auto(probe)


def test_a_compiler_that_fails_keeps_auto_eager_and_stops_on(auto):
    out = auto(FakeProbe(fails=True))
    assert out.choice.chosen == "off" and out.loss_fn is batch_loss
    assert out.choice.reason == ("torch.compile failed here: RuntimeError: BackendCompilerFailed: "
                                 "no C++ compiler")
    probe = FakeProbe(fails=True)
    assert auto(probe).choice.chosen == "off" and probe.calls == []  # the failure is cached
    with pytest.raises(RuntimeError, match="^train.compile on: torch.compile failed here: "):
        auto(FakeProbe(fails=True), asked="on")


def test_the_cache_key_names_machine_torch_threads_model_and_shape():
    key = json.loads(compile_cache.cache_key(CPU, *compile_cache.workload(tiny_trial(), "fp32")))
    assert torch.__version__ in key and torch.get_num_threads() in key and "tiny-llama" in key
    assert compile_cache.COMPILES in key  # what compiles: figures of another unit do not count
    base = compile_cache.workload(tiny_trial(), "fp32")
    for change in ({"model.name": "tiny-gpt2"}, {"train.batch_size": 8}, {"data.seq_len": 64},
                   {"quant.bits": 4}, {"train.grad_checkpointing": True}, {"method": "full"}):
        assert compile_cache.workload(tiny_trial(**change), "fp32") != base, change
    assert compile_cache.workload(tiny_trial(), "bf16") != base
    # the adapter's rank and targets share a verdict: one compile measured per base workload
    adapter = tiny_trial(**{"lora.rank": 2, "lora.targets": "qv"})
    assert compile_cache.workload(adapter, "fp32") == base
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert compile_cache.workload(tiny_trial(), "fp32") != base
    finally:
        torch.set_num_threads(threads)


def test_the_field_takes_auto_on_off_and_yaml_booleans(tmp_path, capsys):
    from search_spaces import load_yaml
    from study.train_one import main as train_one

    assert TrialConfig().train.compile == "off"
    assert TrialConfig.from_dict({"train.compile": load_yaml("off")}).train.compile == "off"
    assert TrialConfig.from_dict({"train.compile": load_yaml("on")}).train.compile == "on"
    code = train_one(["--model", "tiny-llama", "--steps", "2", "--train.compile", "yes", "--out",
                      str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "train.compile must be one of auto, on, off, got 'yes'" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_base_trial_compiles_nothing():
    out = compiling.choose(tiny_trial(method="base", **{"train.compile": "on"}), None, [], 0, CPU,
                           None, "fp32")
    assert out.choice.chosen == "off" and out.loss_fn is batch_loss


def tiny_probe(cfg=None):
    """The real probe on tiny-llama with LoRA and its first two micro-batches."""
    from study.trial.adapter import prepare
    from study.trial.batches import Batcher
    from study.trial.data import build_data
    from study.trial.models import load_model
    from study.trial.train import to_device

    cfg = cfg or tiny_trial()
    model, tokenizer = load_model(cfg.model.name, quant=cfg.quant, dtype=torch.float32,
                                  device=CPU)
    data = build_data(cfg.data, tokenizer)
    prepare(model, cfg)
    batcher = Batcher(data.train, cfg.train.batch_size, cfg.seed, tokenizer.pad_token_id)
    batches = [to_device(batcher.micro_batch(k), CPU)[0] for k in range(6)]
    return compiling.Probe(model, batches[:2], CPU, None), batches


def test_the_real_probe_times_eager_steps_and_leaves_no_trace():
    probe, _ = tiny_probe()
    probe.model.eval()
    rng = torch.get_rng_state()
    assert 0 < probe.eager_ms() < float("inf")
    assert torch.equal(torch.get_rng_state(), rng) and not probe.model.training
    assert all(p.grad is None for p in probe.model.parameters())


def test_a_trial_records_its_choice_and_compile_time(tmp_path):
    from study import record
    from study.trial.run import run_trial

    metrics = run_trial(tiny_trial(**{"train.steps": 1, "eval.every": 1, "train.compile": "auto"}),
                        out_dir=tmp_path)
    choice = record.read_env(tmp_path)["compile"]
    assert (choice["asked"], choice["chosen"]) == ("auto", "off")  # the test suite's switch
    assert compiling.ENV_AUTO in choice["reason"] and metrics["compile_s"] == 0.0
    assert record.read_metrics(tmp_path)["compile_s"] == 0.0


def test_the_live_table_and_the_summary_show_the_choice(tmp_path, capsys):
    from types import SimpleNamespace

    from analysis.summary import _print_compile
    from study import record
    from study.search.callbacks import LiveTable

    choice = {"asked": "auto", "chosen": "on", "reason": "compiled 5 ms vs eager 9 ms ..."}
    record.write_env(tmp_path / "abcdef12", {"compile": choice})

    class Trial(SimpleNamespace):
        def __str__(self) -> str:
            return "abcdef12"

    header, row = LiveTable(tmp_path).table([Trial(config={}, last_result={},
                                                   status="RUNNING")]).splitlines()
    assert header.split()[-2:] == ["compile", "status"] and row.split()[-2] == "auto:on"
    rows = [{"env": {"compile": choice}, "metrics": {"compile_s": s}} for s in (30.0, 12.0)]
    _print_compile(rows)
    assert capsys.readouterr().out == (
        "  compile: on (auto), 2 finished trials, 42 s compiling in all; e.g. compiled 5 ms vs "
        "eager 9 ms ...\n")


@pytest.mark.slow
def test_a_compiled_trial_trains_like_eager(tmp_path):
    """Compiles tiny-llama's loss for real (1-3 minutes on a loaded 2-core machine)."""
    from study import record
    from study.trial.run import run_trial

    runs = {}
    for mode in ("off", "on"):
        cfg = tiny_trial(**{"train.compile": mode, "train.steps": 4, "eval.every": 2})
        runs[mode] = run_trial(cfg, out_dir=tmp_path / mode)
    assert runs["on"]["compile_s"] > 0 and runs["off"]["compile_s"] == 0
    assert record.read_env(tmp_path / "on")["compile"]["chosen"] == "on"
    eager, compiled = (record.read_curve(tmp_path / m)[0] for m in ("off", "on"))
    for a, b in zip(eager, compiled, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], abs=1e-5)


@pytest.mark.slow
def test_the_compiled_loss_equals_eager_on_new_lengths_without_recompiling(tmp_path):
    """The real probe: on compiles once, and batches of other lengths than the compiled ones
    reuse its graph; the floor (the smallest graph's compile) is measured."""
    from torch._dynamo.utils import counters

    probe, batches = tiny_probe()
    out = compiling.resolve("on", probe, "k", "floor", 1, tmp_path / "c.json")
    assert out.compile_s > 0 and out.loss_fn is not batch_loss
    graphs = counters["stats"]["unique_graphs"]
    lengths = {b["input_ids"].shape[1] for b in batches[:2]}
    assert {b["input_ids"].shape[1] for b in batches[2:]} - lengths  # lengths not compiled for
    probe.model.train()
    for batch in batches:
        assert out.loss_fn(probe.model, batch).item() == pytest.approx(
            batch_loss(probe.model, batch).item(), abs=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs
    assert 0 < probe.floor_s() < float("inf")
