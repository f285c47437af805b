"""The training step (study.trial.train): what it learns of a micro-batch comes from the host
(the token count, the target positions), its loss over many targets runs in checkpointed chunks,
and its timer reads CUDA events only once they have completed. Each equals the plain way."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import study.trial.logits as logits
import study.trial.train as train
from lora_impl import inject_lora
from study.sections_run import TrainConfig
from study.trial.batches import collate
from study.trial.data import IGNORE, Example
from study.trial.models.tiny import tiny_builder
from study.trial.steptimer import StepStats, StepTimer
from tests.conftest import randomize_lora

# (length, prompt) of each example: a prompt without targets, a row all targets, a row with none
SHAPES = ((14, 5), (9, 0), (11, 11), (6, 2))


def _examples(seed: int = 0) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n, prompt in SHAPES:
        ids = torch.randint(1, 256, (n,), generator=gen).tolist()
        out.append(Example(input_ids=ids, labels=[IGNORE] * prompt + ids[prompt:]))
    return out


def _model(arch: str, method: str) -> torch.nn.Module:
    model, _ = tiny_builder(arch)(Path("unused"))
    if method == "lora":
        inject_lora(model, "all-linear", rank=4, alpha=8)
        randomize_lora(model)  # a non-zero B: A's gradient is not trivially zero
    return model.train()


def _loss_and_grads(model: torch.nn.Module, batch: dict, reduction: str = "mean"):
    model.zero_grad(set_to_none=True)
    loss, count = train.causal_lm_loss(model, batch, reduction)
    loss.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.detach(), count, grads


def test_target_index_selects_exactly_the_masks_rows():
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 50, (5, 13), generator=gen)
    labels[torch.rand(5, 13, generator=gen) < 0.4] = IGNORE
    labels[2] = IGNORE  # a row without targets
    hidden = torch.randn(5, 13, 7, generator=gen)
    keep = labels[:, 1:] != IGNORE
    index = logits.target_index(labels)
    assert index.dtype == torch.long and len(index) == int(keep.sum()) > 0
    assert torch.equal(hidden.reshape(-1, 7)[index], hidden[:, :-1][keep])
    assert torch.equal(labels.reshape(-1)[index + 1], labels[:, 1:][keep])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_target_positions_from_the_host_are_bitwise_the_masks(arch):
    """The loop's batch (``target_index`` from the host) gives the loss, logits and gradients of
    the boolean mask bitwise, and the loss is today's formula (one chunk) bitwise."""
    model = _model(arch, "lora")
    batch = collate(_examples(), pad_id=0)
    moved, _ = train.to_device(batch, torch.device("cpu"))
    assert "target_index" in moved
    with torch.no_grad():
        ours, targets, keep = logits.target_logits(model, moved)
        plain, plain_targets, plain_keep = logits.target_logits(model, batch)
        hidden = model.base_model(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"]).last_hidden_state
        today = F.cross_entropy(logits.head_logits(model, hidden[:, :-1][plain_keep]).float(),
                                batch["labels"][:, 1:][plain_keep])
    assert torch.equal(ours, plain) and torch.equal(targets, plain_targets)
    assert torch.equal(keep, plain_keep)
    loss, count, grads = _loss_and_grads(model, moved)
    plain_loss, plain_count, plain_grads = _loss_and_grads(model, batch)
    assert torch.equal(loss, plain_loss) and torch.equal(loss, today) and count == plain_count
    assert all(torch.equal(grads[n], plain_grads[n]) for n in grads)


@pytest.mark.parametrize(("arch", "method"), [("llama", "lora"), ("qwen2", "lora"),
                                              ("llama", "full"), ("qwen2", "full")])
def test_chunked_loss_and_gradients_equal_the_plain(arch, method, monkeypatch):
    """Chunks of 5 target positions (21 targets: 5 chunks, the last of 1), each recomputed in
    backward: the loss of every reduction and the gradients (LoRA's A and B; a full fine-tune's
    every weight, Qwen2's tied head and embedding among them) within 1e-5 of one chunk."""
    model = _model(arch, method)
    if arch == "qwen2":  # the tied case is the one meant: the head's weight is the embedding's
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    moved, _ = train.to_device(collate(_examples(), pad_id=0), torch.device("cpu"))
    assert len(moved["target_index"]) == 21
    plain = {r: _loss_and_grads(model, moved, r) for r in ("mean", "sum", "none")}
    assert logits.loss_chunk(model) >= 21  # the default: one chunk, the plain computation
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(logits, "LOGITS_CHUNK_BYTES", 4 * vocab * 5 + 3)
    assert logits.loss_chunk(model) == 5
    calls = []
    original = logits._head_cross_entropy

    def counted(*args):
        calls.append(len(args[2]))
        return original(*args)

    monkeypatch.setattr(logits, "_head_cross_entropy", counted)
    for reduction, (loss, count, grads) in plain.items():
        calls.clear()
        chunked, chunked_count, chunked_grads = _loss_and_grads(model, moved, reduction)
        assert calls[:5] == [5, 5, 5, 5, 1]  # each chunk's forward, then in backward (in
        assert sorted(calls[5:]) == [1, 5, 5, 5, 5]  # autograd's order) its recompute
        assert chunked.shape == loss.shape and chunked_count == count == 21
        torch.testing.assert_close(chunked, loss, rtol=1e-6, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_one_position_per_chunk_at_least(monkeypatch):
    monkeypatch.setattr(logits, "LOGITS_CHUNK_BYTES", 1)
    assert logits.loss_chunk(_model("llama", "lora")) == 1


def test_token_count_from_the_host_equals_the_devices():
    examples = _examples()
    real = sum(len(e.input_ids) for e in examples)
    batch = collate(examples, pad_id=0)
    moved, tokens = train.to_device(batch, torch.device("cpu"))
    assert tokens == real == int(moved["attention_mask"].sum())
    assert set(batch) == {"input_ids", "labels", "attention_mask"}  # the caller's is untouched
    # a batching's own count (``n_tokens``) is taken, not moved; a packed row has no mask
    packed = {"input_ids": torch.ones(1, 40, dtype=torch.long), "labels": torch.ones(1, 40,
              dtype=torch.long), "position_ids": torch.arange(40)[None], "n_tokens":
              torch.tensor(37)}
    moved, tokens = train.to_device(packed, torch.device("cpu"))
    assert tokens == 37 and "n_tokens" not in moved and len(moved["target_index"]) == 39
    # a classifier's batch has no token targets to index
    classify = {**collate(examples, pad_id=0), "class_labels": torch.tensor([0, 1, 0, 1])}
    moved, tokens = train.to_device(classify, torch.device("cpu"))
    assert tokens == real and "target_index" not in moved


def _losses(model: torch.nn.Module, cfg: TrainConfig) -> list[float]:
    losses: list[float] = []
    optimizer = train.make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    examples = _examples() + _examples(seed=1)
    train.train_loop(model, examples, cfg, 0, optimizer, cfg.steps, 0, every=100,
                     callbacks=(lambda _step, loss: losses.append(loss),))
    return losses


def test_train_loop_with_a_chunked_loss_trains_as_the_plain(monkeypatch):
    cfg = TrainConfig(steps=3, batch_size=3, grad_accum=2, warmup=1, lr=1e-2)
    model = _model("llama", "lora")
    twin = copy.deepcopy(model)
    plain = _losses(model, cfg)
    monkeypatch.setattr(logits, "LOGITS_CHUNK_BYTES", 4 * model.config.vocab_size * 2)
    chunked = _losses(twin, cfg)
    assert len(plain) == 3 and plain != chunked  # the chunks ran: not the same float sums
    assert chunked == pytest.approx(plain, rel=1e-5)
    # Adam scales each element's step by its own gradient's size, so an element whose gradient
    # is float noise can step differently by up to lr: one lora_A element differed by 2e-5 on an
    # AMD EPYC with avx512_bf16 (the losses agree to 1e-5); 1% of lr bounds that, and a chunking
    # bug (a wrong chunk's logits) would move whole rows by about lr
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=0.01 * cfg.lr, msg=name)


class _FakeEvent:
    """A CUDA event on one fake stream: each record is one second after the last; complete once
    the fake GPU has reached it (``reached``: the GPU works in order), which ``query`` tells
    without waiting and ``synchronize`` waits for."""

    clock = reached = 0.0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t = float("inf")

    def record(self) -> None:
        _FakeEvent.clock += 1.0
        self.t = _FakeEvent.clock

    def query(self) -> bool:
        return self.t <= _FakeEvent.reached

    def synchronize(self) -> None:
        _FakeEvent.reached = max(_FakeEvent.reached, self.t)

    def elapsed_time(self, end: _FakeEvent) -> float:
        assert self.query() and end.query(), "an event read before the GPU reached it"
        return (end.t - self.t) * 1e3


def _step(timer: StepTimer, stats: StepStats, tokens: int) -> None:
    timer.start()
    timer.lap()  # the batch is ready
    timer.lap("fwd")
    timer.lap("bwd")
    stats.tokens += tokens
    timer.lap()  # the loss read
    timer.stop()


def test_cuda_step_timer_reads_each_steps_events_once_they_completed(monkeypatch):
    def host_clock(device):
        raise AssertionError("the host's clock read on CUDA (it syncs)")

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(_FakeEvent, "clock", 0.0)
    monkeypatch.setattr(_FakeEvent, "reached", 0.0)
    stats = StepStats()
    timer = StepTimer(torch.device("cuda"), stats, host_clock)
    _step(timer, stats, tokens=10)
    assert stats.step_ms == []  # the GPU is not there yet: nothing read, nothing waited for
    _FakeEvent.reached = _FakeEvent.clock + 4  # step 2's loss read: the GPU is past step 1
    _step(timer, stats, tokens=20)
    assert stats.step_ms == [5000.0] and stats.fwd_ms == stats.bwd_ms == stats.opt_ms == [1000.0]
    assert (stats.warm_tokens, stats.warm_seconds, stats.seconds) == (10, 5.0, 5.0)
    timer.flush()  # before a report: waits for step 2's end
    assert stats.step_ms == [5000.0, 5000.0] and stats.seconds == 10.0
    assert stats.timed() == (20, 5.0)


@pytest.mark.gpu
def test_a_cuda_micro_batch_reads_nothing_back_but_transformers_mask(monkeypatch):
    """On CUDA, a micro-batch as the loop runs it (to the device, forward with a chunked loss,
    backward, the loss summed) under torch's sync debug mode: no synchronizing call but
    transformers' own reads of the attention mask while building the causal mask."""
    device = torch.device("cuda")
    model = _model("llama", "lora").to(device)
    monkeypatch.setattr(logits, "LOGITS_CHUNK_BYTES", 4 * model.config.vocab_size * 5)
    batch = collate(_examples(), pad_id=0)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            moved, tokens = train.to_device(batch, device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = train.batch_loss(model, moved)
            (loss / 2).backward()
            loss_sum += loss.detach().double() / 2
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    assert not [s for s in syncs if "transformers" not in s], syncs
    assert tokens == int(batch["attention_mask"].sum()) and torch.isfinite(loss_sum).item()
