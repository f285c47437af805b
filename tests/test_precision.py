"""train.dtype=auto is chosen by measured speed, cached per machine and shape, and recorded."""

from __future__ import annotations

import json

import pytest
import torch

from study.trial import precision

CPU = torch.device("cpu")
SHAPE = (512, 576, 1536)


def fake_timer(times: dict[str, float], calls: list):
    def timer(shape, name, device):
        calls.append((shape, name))
        return times[name]

    return timer


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ({"fp32": 3.3, "bf16": 6.0}, "fp32"),  # bf16 slower (2-core Xeon with avx512_bf16)
        ({"fp32": 6.0, "bf16": 3.3}, "bf16"),  # bf16 faster (EPYC, a GPU)
        ({"fp32": 3.3, "bf16": 3.2}, "fp32"),  # within the tie margin: fp32 loses no precision
    ],
)
def test_auto_takes_the_measured_faster_precision(bf16_cpu, tmp_path, times, expected):
    calls = []
    choice = precision.resolve("auto", CPU, SHAPE, tmp_path / "p.json", fake_timer(times, calls))
    assert choice.name == expected
    assert choice.amp == (torch.bfloat16 if expected == "bf16" else None)
    assert choice.timings_ms == times and not choice.cached
    assert sorted(name for _, name in calls) == ["bf16", "fp32"]
    assert all(shape == SHAPE for shape, _ in calls)  # the model's own shape is timed


def test_without_native_bf16_only_fp32_is_timed_and_bf16_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    calls = []
    timer = fake_timer({"fp32": 3.0, "bf16": 1.0}, calls)
    choice = precision.resolve("auto", CPU, SHAPE, tmp_path / "p.json", timer)
    assert choice.name == "fp32" and [n for _, n in calls] == ["fp32"]
    with pytest.raises(ValueError, match="train.dtype bf16 is not supported on this cpu"):
        precision.resolve("bf16", CPU, SHAPE, tmp_path / "p.json", timer)


def test_the_verdict_is_cached_per_machine_and_shape(bf16_cpu, tmp_path):
    cache, calls = tmp_path / "p.json", []
    timer = fake_timer({"fp32": 3.0, "bf16": 5.0}, calls)
    first = precision.resolve("auto", CPU, SHAPE, cache, timer)
    again = precision.resolve("auto", CPU, SHAPE, cache, timer)
    assert len(calls) == 2 and again.cached and again.name == first.name == "fp32"
    assert again.timings_ms == first.timings_ms
    precision.resolve("auto", CPU, (512, 960, 2560), cache, timer)  # another model's shape
    assert len(calls) == 4
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        precision.resolve("auto", CPU, SHAPE, cache, timer)  # another thread count
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 6


@pytest.mark.parametrize("text", ["{not json", "[1]", '{"k": {"fp32": -1}}', ""])
def test_a_damaged_cache_is_measured_again(bf16_cpu, tmp_path, text):
    cache, calls = tmp_path / "p.json", []
    cache.write_text(text)
    choice = precision.resolve("auto", CPU, SHAPE, cache, fake_timer({"fp32": 2, "bf16": 1}, calls))
    assert choice.name == "bf16" and len(calls) == 2 and not choice.cached
    assert len(json.loads(cache.read_text())) == 1  # rewritten whole


def test_fixed_dtypes_are_not_measured(bf16_cpu, tmp_path):
    calls = []
    timer = fake_timer({}, calls)
    assert precision.resolve("fp32", CPU, SHAPE, tmp_path / "p.json", timer).amp is None
    assert precision.resolve("bf16", CPU, SHAPE, tmp_path / "p.json", timer).amp is torch.bfloat16
    assert calls == [] and not (tmp_path / "p.json").exists()


def test_the_real_timer_times_both_precisions():
    for name in ("fp32", "bf16"):
        ms = precision.time_matmul((64, 32, 48), name, CPU)
        assert 0 < ms < float("inf")


@pytest.mark.parametrize("dtype, message", [
    ("bf16", "train.dtype bf16 is not supported"),
    ("fp16", "train.dtype fp16 needs a CUDA device"),
])
def test_an_unsupported_dtype_is_one_line_exit_2_before_anything(dtype, message, monkeypatch,
                                                                 tmp_path, capsys):
    from study.train_one import main as train_one
    from study.tune import main as tune

    if torch.cuda.is_available():
        pytest.skip("both run on CUDA")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    code = tune(["--space", "smoke", "--storage-path", str(tmp_path / "res"), "--set",
                 f"train.dtype={dtype}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "res").exists()
    code = train_one(["--model", "tiny-llama", "--steps", "2", "--dtype", dtype, "--out",
                      str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_cached_rate_taken_on_a_busy_machine_is_replaced_once_a_faster_one_is_timed(
        bf16_cpu, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "_checked", set())
    cache, calls = tmp_path / "p.json", []
    busy = {"fp32": 6.0, "bf16": 4.0}  # timed while another process had the cores
    precision.matmul_timings(CPU, SHAPE, cache, fake_timer(busy, calls))
    quiet = fake_timer({"fp32": 3.0, "bf16": 3.9}, calls)
    assert precision.checked_timings(CPU, SHAPE, cache, quiet) == {"fp32": 3.0, "bf16": 3.9}
    assert precision.matmul_timings(CPU, SHAPE, cache, quiet)[0] == {"fp32": 3.0, "bf16": 3.9}
    timed = len(calls)
    precision.checked_timings(CPU, SHAPE, cache, quiet)  # once per process
    assert len(calls) == timed


def test_a_slower_time_now_never_replaces_a_faster_cached_one(bf16_cpu, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "_checked", set())
    cache = tmp_path / "p.json"
    precision.matmul_timings(CPU, SHAPE, cache, fake_timer({"fp32": 3.0, "bf16": 4.0}, []))
    before = cache.read_text()
    busy = fake_timer({"fp32": 9.0, "bf16": 9.0}, [])
    assert precision.checked_timings(CPU, SHAPE, cache, busy) == {"fp32": 3.0, "bf16": 4.0}
    assert cache.read_text() == before


class _SharedClock:
    """Each clock advances 4 ms per read: a matmul over 2 threads that got half the machine
    (another process held the rest) took 4 ms of wall time and 2 ms of each thread's."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def perf_counter(self):
        self.wall += 0.004  # read twice per mm
        return self.wall

    def process_time(self):
        self.cpu += 0.004
        return self.cpu


def test_a_cpu_matmul_is_timed_by_the_cpu_its_threads_got_not_the_wall_clock(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(precision, "time", _SharedClock())
    # wall 4 ms between the reads around each mm; cpu 4 ms over 2 threads: 2 ms each
    assert precision.time_matmul((8, 8, 8), "fp32", torch.device("cpu")) == pytest.approx(2.0)
