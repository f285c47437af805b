"""run_trial(config, report, resume_from) -> metrics: one whole trial, with no Ray in it.

    from study.config import TrialConfig
    from study.trial.run import run_trial
    metrics = run_trial(TrialConfig(), out_dir="runs/x")

Seed -> load the model (quantized if asked) -> LoRA / full / base -> data -> train, and every
``eval.every`` steps: evaluate, write the trial files, checkpoint, then ``report``. Everything a
trial leaves behind is on disk *before* each report, because a scheduler may end the trial
inside ``report`` (Ray Tune's ASHA does). The last report also carries the test-split metrics
and the decode latencies.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lora_impl import adapter_weights_file, count_parameters, save_adapter
from lora_impl.loraplus import loraplus_groups
from study import metrics as M
from study import record
from study.config import TrialConfig
from study.trial import compiling, dpo, host_memory, precision, reference
from study.trial.adapter import prepare
from study.trial.checkpoint import load_checkpoint, save_checkpoint
from study.trial.data import Example, TaskData, build_data
from study.trial.environment import environment
from study.trial.measure import Measure
from study.trial.models import cast_float_weights, load_model, set_compute_dtype
from study.trial.models.classifier import HEAD, as_classifier
from study.trial.packing import check_batching
from study.trial.resources import PeakMemory
from study.trial.train import RECENT_LOSSES, StepStats, make_optimizer, total_steps, train_loop

Report = Callable[[dict, "str | None"], None]
CURVE_KEYS = (M.STEP, M.TOKENS_SEEN, M.TRAIN_LOSS, M.EVAL_LOSS, M.EVAL_PPL, M.EXACT_MATCH,
              *M.CLASSIFY_EVAL, *M.PREFERENCE_EVAL)


def _finite_or_none(value):
    """NaN/inf -> None, so metrics.json is strict JSON (a browser or jq can read it)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class Progress:
    """What a checkpoint carries besides tensors: how far the trial got, and its curve so far."""

    step: int = 0
    curve: list[dict] = field(default_factory=list)
    tokens_seen: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    trial_s: float = 0.0
    recent_losses: list[float] = field(default_factory=list)
    timed_tokens: int = 0  # tokens and seconds of the steps after each process's first
    timed_s: float = 0.0
    scaler: dict = field(default_factory=dict)  # fp16's gradient-scaler state (GradScaler)

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        """The progress fields of a checkpoint's state (other keys are the optimizer's)."""
        return cls(**{k: state[k] for k in asdict(cls()) if k in state})


class _Trial:
    """One loaded trial: model, data, optimizer and progress; ``evaluate`` writes and reports."""

    def __init__(self, cfg: TrialConfig, out: Path, report: Report | None, resume_from) -> None:
        self.cfg, self.out, self.report = cfg, out, report
        self.started = time.perf_counter()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # before anything large is allocated: the peak it reports is the trial's own
        self.host_allocator = host_memory.configure() if self.device.type == "cpu" else None
        self._load()
        self.pad_id = self.tokenizer.pad_token_id
        self.total_steps = total_steps(cfg.train, len(self.data.train))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._optimizer()
        self.measure = Measure(cfg, self.model, self.tokenizer, self.data, self.amp)
        self.loss_fn = self.compiled.loss_fn
        self.reference, self.reference_new = None, False
        if cfg.data.task == "preference":
            self.loss_fn = dpo.make_loss(cfg.dpo)
            self._reference(resume_from is not None)
        self._restore(resume_from)  # after the reference: the model is still the starting one
        self.memory = PeakMemory(self.device)
        self.stats = StepStats(losses=list(self.progress.recent_losses))
        self.latest: dict = {}

    def _load(self) -> None:
        """The model in the trial's precision, the data, a classifier's head and the adapter
        (``load_s`` times them), and the environment they run in."""
        cfg = self.cfg
        precision.check_supported(cfg.train.dtype, self.device)
        # The storage dtype is needed before loading, the measured choice only after (it times
        # the model's own shapes): load in what auto will choose on CUDA (a GPU computes its
        # 16-bit type faster), and re-cast in the rare case it measures otherwise.
        expected = cfg.train.dtype
        if expected == "auto":
            expected = precision.preferred(self.device)
        storage = precision.storage_dtype(self.device, expected, cfg.method)
        t_load = time.perf_counter()
        storage = self._load_model(storage)
        self.data: TaskData = build_data(cfg.data, self.tokenizer)
        self.labels = self.data.labels
        if self.labels:
            self.model = as_classifier(self.model, len(self.labels), cfg.seed)
        prepare(self.model, cfg)
        self.load_s = time.perf_counter() - t_load
        # a train.batching that cannot run (pack: a classifier, or a model that mixes packed
        # examples) is refused here, before any file is written
        check_batching(cfg.train.batching, self.model, cfg.model.name, self.data.train)
        # train.compile (auto: timed on this model and its first batches; in trial_s, not load_s)
        self.compiled = compiling.choose(cfg, self.model, self.data.train,
                                         self.tokenizer.pad_token_id, self.device, self.amp,
                                         self.precision.name)
        self.env = environment(cfg, self.device, self.precision.record(), storage, self.model,
                               self.data.train, compile_choice=self.compiled.choice.record(),
                               host_allocator=self.host_allocator)

    def _reference(self, resuming: bool) -> None:
        """dpo.reference=cached: the starting model's log-probabilities of every pair (read back
        from the trial directory when resuming), attached to the examples."""
        if self.cfg.dpo.reference != "cached":
            return
        splits = ("eval", "test") if self.cfg.method == "base" else ("train", "eval", "test")
        self.reference, self.reference_new = reference.reference_for(
            self.model, self.data, self.pad_id, self.amp, self.out if resuming else None, splits)
        reference.attach(self.data, self.reference)

    def _load_model(self, storage: torch.dtype) -> torch.dtype:
        """The model and tokenizer, loaded in ``storage``, then in the trial's measured precision;
        the storage dtype they ended in."""
        cfg = self.cfg
        self.model, self.tokenizer = load_model(
            cfg.model.name,
            quant=cfg.quant,
            dtype=storage,
            device=self.device,  # placed before quantizing; never moved after
        )
        tokens = cfg.train.batch_size * cfg.data.seq_len
        self.precision = precision.resolve(
            cfg.train.dtype, self.device, precision.matmul_shape(self.model, tokens)
        )
        self.amp = self.precision.amp
        wanted = precision.storage_dtype(self.device, self.precision.name, cfg.method)
        if wanted != storage:
            cast_float_weights(self.model, wanted)
        set_compute_dtype(self.model, self.amp or torch.float32)  # 4-bit layers, explicitly
        return wanted

    def _optimizer(self):
        """AdamW over the trainable parameters (LoRA+: B in a group of its own, faster)."""
        cfg = self.cfg
        params = self.trainable
        if cfg.method == "lora" and cfg.lora.loraplus_ratio != 1:  # B faster than A (LoRA+)
            params = loraplus_groups(self.model, cfg.train.lr, cfg.lora.loraplus_ratio,
                                     cfg.train.weight_decay)
        return make_optimizer(params, cfg.train)

    def _restore(self, resume_from) -> None:
        """The progress to continue from: a checkpoint's (weights, optimizer and RNG state put
        back), or none when ``resume_from`` is None."""
        self.progress = Progress()
        self.resumed_from_step = None
        if resume_from is not None:
            state = load_checkpoint(Path(resume_from), self.model, self.optimizer)
            self.progress = Progress.from_state(state)
            self.resumed_from_step = self.progress.step
        self.base_tokens, self.base_seconds = self.progress.tokens_seen, self.progress.train_s
        self.base_timed = (self.progress.timed_tokens, self.progress.timed_s)
        self.base_trial_s = self.progress.trial_s

    def quality(self, split: str, final: bool) -> tuple[dict, list[tuple[Example, str]]]:
        """The model's quality on ``split`` ("eval" or "test"): ``Measure.quality``."""
        return self.measure.quality(split, final)

    def _timed(self) -> tuple[int, float]:
        """Tokens and seconds of the trial's steps after each process's first (all resumes)."""
        tokens, seconds = self.stats.timed()
        return self.base_timed[0] + tokens, self.base_timed[1] + seconds

    def _training_metrics(self, step: int) -> dict:
        summary = self.stats.summary()
        tokens_seen = self.base_tokens + self.stats.tokens
        train_s = self.base_seconds + self.stats.seconds
        measured = bool(self.stats.step_ms)  # a base trial (or a resumed final one) trained 0 steps
        timed_tokens, timed_s = self._timed()
        return {
            M.STEP: step,
            "resumed_from_step": self.resumed_from_step,
            M.TOKENS_SEEN: tokens_seen,
            M.TRAIN_LOSS: summary["train_loss"],
            M.TRAINABLE_PARAMS: count_parameters(self.model)[0],
            M.LOAD_S: self.load_s,
            M.COMPILE_S: self.compiled.compile_s,
            M.TRAIN_S: train_s,
            M.PEAK_MEM_MB: self.memory.peak() if measured else None,
            M.START_MEM_MB: self.memory.start_mb,
            M.PEAK_RESERVED_MB: self.memory.peak_reserved() if measured else None,
            M.TRAIN_TOKENS_PER_S: timed_tokens / timed_s if timed_s else None,
            **{k: summary[k] for k in (M.FWD_MS, M.BWD_MS, M.OPT_MS, M.STEP_MS)},
        }

    def _save_adapter(self) -> float:
        """Write the adapter (LoRA) and return its size in MB; full/base: the trainable size."""
        if self.cfg.method != "lora":
            return sum(p.numel() * p.element_size() for p in self.trainable) / 2**20
        path = save_adapter(
            self.model, record.adapter_dir(self.out), base_model_name_or_path=self.cfg.model.name,
            modules_to_save=(HEAD,) if self.labels else (),
        )
        return adapter_weights_file(path).stat().st_size / 2**20

    def evaluate(self, step: int) -> None:
        """Measure, write every trial file and the checkpoint, then report (which may stop us)."""
        t_eval = time.perf_counter()
        final = step >= self.total_steps
        metrics, pairs = self.quality("eval", final)
        metrics.update(self._training_metrics(step))
        metrics[M.ADAPTER_MB] = self._save_adapter()
        if final:
            test, test_pairs = self.quality("test", final=True)
            metrics.update(test)
            pairs += test_pairs
            metrics.update(self.measure.latencies())
            metrics[record.FINAL] = True
        self.progress.eval_s += time.perf_counter() - t_eval
        metrics[M.EVAL_S] = self.progress.eval_s
        self.progress.trial_s = self.base_trial_s + time.perf_counter() - self.started
        metrics[M.TRIAL_S] = self.progress.trial_s
        metrics = {k: _finite_or_none(v) for k, v in metrics.items()}
        point = {k: metrics[k] for k in CURVE_KEYS if k in metrics}
        self.progress.curve = [p for p in self.progress.curve if p["step"] < step] + [point]
        self.progress.step = step
        self.progress.tokens_seen = metrics[M.TOKENS_SEEN]
        self.progress.train_s = metrics[M.TRAIN_S]
        self.progress.timed_tokens, self.progress.timed_s = self._timed()
        self.progress.recent_losses = self.stats.losses[-RECENT_LOSSES:]
        record.write_metrics(self.out, metrics)
        record.write_curve(self.out, self.progress.curve)
        examples = [
            {"prompt": e.prompt, "target": e.reference, "output": o}
            for e, o in pairs[: self.cfg.eval.num_examples]
        ]
        record.write_examples(self.out, examples)
        checkpoint = None
        if self.cfg.method != "base":
            checkpoint = record.checkpoint_dir(self.out)
            save_checkpoint(checkpoint, self.model, self.optimizer, asdict(self.progress))
        self.latest = metrics
        if self.report is not None:
            self.report(dict(metrics), str(checkpoint) if checkpoint else None)

    def run(self, callbacks: tuple[Callable[[int, float], None], ...]) -> dict:
        """Train to the end (evaluating every ``eval.every`` steps); the last metrics."""
        if self.cfg.method == "base":  # nothing to train: evaluate the untouched model once
            self.total_steps = 0
            self.evaluate(0)
        elif self.progress.step >= self.total_steps:  # resumed from the final checkpoint
            self.evaluate(self.progress.step)
        else:
            train_loop(
                self.model,
                self.data.train,
                self.cfg.train,
                self.cfg.seed,
                self.optimizer,
                self.total_steps,
                self.pad_id,
                start_step=self.progress.step,
                on_eval=self.evaluate,
                every=self.cfg.eval.every,
                callbacks=callbacks,
                memory=self.memory,
                stats=self.stats,
                amp=self.amp,
                scaler=self.progress.scaler,
                loss_fn=self.loss_fn,
            )
        return self.latest


def run_trial(
    config: TrialConfig,
    report: Report | None = None,
    resume_from: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = ".",
    callbacks: tuple[Callable[[int, float], None], ...] = (),
) -> dict:
    """Run one trial end to end; return its last metrics (see the module docstring).

    Args:
        config: the trial.
        report: called as ``report(metrics, checkpoint_dir)`` after every evaluation, with the
            trial files and the checkpoint already written; it may stop the trial by raising.
            The last report of a trial that ran to its end has ``"final": True``.
        resume_from: a checkpoint directory written by an earlier run of the same config.
        out_dir: the trial directory (its files are listed in ``study.record``).
        callbacks: ``callback(step, loss)`` after every optimizer step (progress bars).

    Raises:
        ValueError: a bad model, target, data size or source. NonFiniteLossError: the loss
            diverged (the message names the step).
    """
    out = Path(out_dir)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    trial = _Trial(config, out, report, resume_from)  # every input checked: nothing written yet
    out.mkdir(parents=True, exist_ok=True)
    record.write_config(out, config.to_dict())
    record.write_env(out, trial.env)
    if trial.labels:
        record.write_labels(out, trial.labels, trial.data.info["train_counts"])
    if trial.reference_new:
        record.write_reference(out, trial.reference)
    return trial.run(callbacks)

