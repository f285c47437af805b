"""What a training step keeps for backward, counted on small copies of the model.

    graph = saved_bytes(hf_config, cfg, amp)   # Graph: bytes per layer, token, target, ...
    graph.total(rows, length, targets)         # a micro-batch: rows x padded length

The activations are most of a LoRA trial's peak, and they depend on everything at once: which
layers carry an adapter (an adapter's input is kept), the compute precision (under bf16
autocast every frozen weight is cast, and the cast kept, for each forward), quantization
(bitsandbytes keeps its own tensors), gradient checkpointing, the loss at target positions
only. Rather than a formula for each architecture, this runs the real loss
(``study.trial.train.batch_loss``) on copies of the model's architecture with one and two layers and
a small vocabulary, random weights, with the trial's adapter, quantization and precision, and
adds up the bytes of every tensor autograd saves (each storage once, the weights themselves
not). Six forwards of at most 32 tokens, in padded batches of two like the loop's (padding makes
attention keep a mask and its weights: a term in the square of the length), give a linear model
in layers, tokens, squared lengths and targets, which is scaled to the model's layer count and
vocabulary; the logits term counts one loss chunk at most (the training loss runs the output head
over chunks of target positions, one chunk's logits alive at a time: ``study.trial.logits``). Cached
per configuration class in the process. A classify trial's probes are the same copies with the
trial's score head (``PROBE_LABELS`` outputs: its activations are a few numbers per row) and its
loss; they have no vocabulary logits, so their target term comes out as nothing.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, fields

import numpy as np
import torch

from study.config import TrialConfig
from study.trial.logits import chunk_positions

# (layers, padded length, target tokens, vocabulary) of the probes, each a batch of 2 rows (the
# second padded by a quarter): enough to separate each term of the fit
PROBES = ((1, 16, 4, 512), (1, 24, 4, 512), (1, 32, 4, 512), (1, 32, 24, 512), (2, 16, 4, 512),
          (2, 24, 4, 512), (2, 32, 4, 512), (2, 32, 24, 512), (1, 16, 4, 1024),
          (1, 32, 24, 1024))
ROWS = 2
RANKS = (1, 2)  # the adapter ranks probed (see saved_bytes)
PROBE_LABELS = 4  # a classify probe's head outputs


@dataclass(frozen=True)
class Graph:
    """Bytes autograd keeps for a micro-batch, in terms of its size."""

    const: float
    per_token: float  # per row x padded length
    per_square: float  # per row x padded length squared (attention's mask and weights)
    per_target: float  # besides its logits (the hidden state gathered for the head, ...)
    casts: float = 0.0  # the autocast copies of weights it keeps: no gradient of that size
    per_logits: float = 0.0  # per target position's logits (a vocabulary's worth)
    chunk: float = float("inf")  # target positions whose logits exist at once (the loss chunk)

    def total(self, rows: int, length: int, targets: int) -> float:
        """Bytes for a micro-batch of ``rows`` padded to ``length`` with ``targets`` targets:
        the logits of at most one loss chunk (``study.trial.logits.loss_chunk``) at a time."""
        return (self.const + self.per_token * rows * length + self.per_square * rows * length**2
                + self.per_target * targets + self.per_logits * min(targets, self.chunk))


def _probe_model(hf_config, layers: int, vocab: int, cfg: TrialConfig,
                 amp: torch.dtype | None) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from lora_impl import inject_lora
    from study.trial.models.quantize import quantize_linears, set_compute_dtype

    c = copy.deepcopy(hf_config)
    c.num_hidden_layers, c.vocab_size = layers, vocab
    if isinstance(getattr(c, "layer_types", None), list):
        c.layer_types = c.layer_types[:layers]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(getattr(c, name, None), int) and getattr(c, name) >= vocab:
            setattr(c, name, 0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(c)
    if cfg.quant.bits != 16:
        quantize_linears(model, cfg.quant)
        set_compute_dtype(model, amp or torch.float32)  # as the trial's 4-bit layers compute
    classify = cfg.data.task == "classify"
    if classify:  # as the trial: the loaded (quantized) causal LM, then its fp32 score head
        from study.trial.models.classifier import as_classifier

        model = as_classifier(model, PROBE_LABELS)
    for p in model.parameters():
        p.requires_grad_(cfg.method == "full")
    if cfg.method == "lora":
        inject_lora(model, cfg.lora.target_spec, cfg.lora.spec())
    if classify:
        model.score.requires_grad_(cfg.method != "base")
    if cfg.train.grad_checkpointing and cfg.method != "base":
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.enable_input_require_grads()
    model.train()
    return model


def _saved(model: torch.nn.Module, length: int, targets: int, amp: torch.dtype | None,
           ) -> tuple[int, int]:
    """(bytes of activations, bytes of weight casts) autograd keeps for one probe batch."""
    from study.trial.data import IGNORE
    from study.trial.train import batch_loss

    vocab = model.get_input_embeddings().weight.shape[0]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    # under autocast a linear layer keeps its weight's low-precision copy for backward: held
    # through the step like a weight, with no activation gradient beside it
    casts_by_shape: dict[tuple, list[torch.Tensor]] = {}  # each weight cast once, to compare
    for p in model.parameters() if amp else ():
        if p.is_floating_point() and p.dim() == 2:
            casts_by_shape.setdefault(tuple(p.shape), []).append(p.detach().to(amp))
    seen: dict[int, tuple[int, bool]] = {}

    def is_cast(t: torch.Tensor) -> bool:  # by value: an activation can have a weight's shape
        if t.dtype != amp or t.dim() != 2:
            return False
        for u in (t.detach(), t.detach().t()):  # linear keeps the transposed view
            if any(torch.equal(u, w) for w in casts_by_shape.get(tuple(u.shape), ())):
                return True
        return False

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = (storage.nbytes(), is_cast(t))
        return t

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (ROWS, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, length - length // 4 :] = 0  # the second row is shorter: right padding, as collate
    labels = torch.full_like(ids, IGNORE)
    per_row = targets // ROWS  # the loss at each row's last real positions
    labels[0, length - per_row :] = ids[0, length - per_row :]
    end = length - length // 4
    labels[1, end - (targets - per_row) : end] = ids[1, end - (targets - per_row) : end]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if hasattr(model, "score"):  # a classifier: one label per row, no token targets
        batch["class_labels"] = torch.arange(ROWS) % PROBE_LABELS
    autocast = torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None)
    with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        batch_loss(model, batch)
    casts = sum(n for n, cast in seen.values() if cast)
    return sum(n for n, _ in seen.values()) - casts, casts


@functools.lru_cache(maxsize=64)
def _graph(config_json: str, cls: str, amp_name: str | None, layers: int, vocab: int) -> Graph:
    from transformers import AutoConfig

    data = json.loads(config_json)
    hf_config = AutoConfig.for_model(data.pop("model_type"), **data)
    cfg = TrialConfig.from_dict(json.loads(cls))
    amp = torch.bfloat16 if amp_name == "bf16" else None
    rows, sizes, casts = [], [], []
    models = {(n, v): _probe_model(hf_config, n, v, cfg, amp) for n, _, _, v in PROBES}
    for n, t, m, v in PROBES:
        # saved = c0 + cv v + c1 n + (t0 + t1 n) BT + (s0 + s1 n) BT^2 + (m0 + mv v) m: per
        # layer, per token, per squared length (each also per layer), per target token (its
        # logits: per vocabulary entry); the vocabulary also in the constant (the output head's
        # weight, cast under autocast)
        bt, bt2 = ROWS * t, ROWS * t * t
        rows.append([1, v, n, bt, n * bt, bt2, n * bt2, m, m * v])
        kept, cast = _saved(models[n, v], t, m, amp)
        sizes.append(kept)
        casts.append(cast)
    c0, cv, c1, t0, t1, s0, s1, m0, mv = np.linalg.lstsq(
        np.array(rows, float), np.array(sizes, float), rcond=None
    )[0]
    # the casts do not depend on the batch: a constant, per vocabulary entry and per layer
    w0, wv, w1 = np.linalg.lstsq(
        np.array([r[:3] for r in rows], float), np.array(casts, float), rcond=None
    )[0]
    # the probes' logits fit one loss chunk; the model's may be many, one alive at a time
    return Graph(const=c0 + cv * vocab + c1 * layers, per_token=t0 + t1 * layers,
                 per_square=s0 + s1 * layers, per_target=m0, per_logits=mv * vocab,
                 chunk=chunk_positions(vocab),
                 casts=max(0.0, w0 + wv * vocab + w1 * layers))


def saved_bytes(hf_config, cfg: TrialConfig, amp: torch.dtype | None) -> Graph:
    """The Graph of ``cfg`` (its adapter, quantization, method, checkpointing) on the
    architecture ``hf_config`` under autocast ``amp`` (None: fp32)."""
    config = hf_config.to_dict()
    keep = {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}
    cls = {"method": cfg.method, "lora.targets": cfg.lora.targets, "lora.rank": cfg.lora.rank,
           "quant.bits": cfg.quant.bits, "quant.type": cfg.quant.type,
           "quant.int8_threshold": cfg.quant.int8_threshold,
           "train.grad_checkpointing": cfg.train.grad_checkpointing,
           "data.task": "classify" if cfg.data.task == "classify" else "lm",
           "lora.variant": cfg.lora.variant}  # DoRA keeps more per layer: probed, not guessed
    if cfg.method == "full":
        cls["quant.bits"] = 16
    if cfg.method != "lora":  # no adapter: its targets and rank change nothing
        cls.update({"lora.targets": "qv", "lora.rank": 1, "lora.variant": "lora"})

    config_json = json.dumps(keep, sort_keys=True, default=str)

    def graph(rank: int) -> Graph:
        return _graph(config_json, json.dumps({**cls, "lora.rank": rank}, sort_keys=True),
                      "bf16" if amp is not None else None, hf_config.num_hidden_layers,
                      hf_config.vocab_size)

    if cfg.method != "lora" or cfg.lora.rank in RANKS:
        return graph(cls["lora.rank"])
    # what an adapter adds is linear in its rank (its A output kept for B, A and B's casts):
    # two probed ranks give every other, so a space of 7 ranks costs 2 probes, not 7
    (r0, r1), (g0, g1) = RANKS, (graph(RANKS[0]), graph(RANKS[1]))
    w = (cfg.lora.rank - r0) / (r1 - r0)
    return Graph(**{f.name: getattr(g0, f.name) + w * (getattr(g1, f.name) - getattr(g0, f.name))
                    for f in fields(Graph)})
