"""What a CPU trial's process holds beyond the tensors the memory estimate counts, measured.

    host_quant_bytes(cfg, amp)            # bytes per quantized weight beyond the stored ones
    shapes_bytes(cfg, facts, graph, amp)  # what the distinct micro-batch shapes leave resident

Both are 0 on CUDA, whose peak (``max_memory_allocated``) counts tensors; on CPU the peak is the
process's resident high-water mark, and glibc's heap, bitsandbytes' CPU path and oneDNN keep
memory that no live tensor accounts for (docs/BENCHMARKS.md, "Memory over a whole trial").
"""

from __future__ import annotations

import torch

from study.config import TrialConfig
from study.cost.workload import workload

# What a CPU trial's process holds per quantized weight beyond those bytes, per bits and compute
# precision, measured (the peak a trial reached less the rest of the estimate, over the model's
# quantized weights: ``bench/memory_model.py --long``, docs/BENCHMARKS.md): the float weights
# quantizing replaced, freed into glibc's heap between live blocks and kept resident, and the
# float copies bitsandbytes makes of a weight in each forward and backward on CPU (LLM.int8 more:
# its fp16 inputs and outlier columns; under bf16 autocast 4-bit's copies are bf16 and come and
# go within the activations already counted). Not on CUDA, whose peak counts tensors.
HOST_QUANT_BYTES = {(8, "fp32"): 5.87, (4, "fp32"): 2.61, (8, "bf16"): 9.4, (4, "bf16"): 0.0}
# On CPU each distinct micro-batch shape a trial trains on leaves memory resident (glibc's heap
# keeps the freed blocks of one shape that the next cannot reuse; under bf16, oneDNN also keeps
# per-shape buffers): the share of each distinct shape's kept activations
# (``study.cost.activations``) the process keeps, per compute precision and bits, fitted on
# classify trials of 5 to 443 steps (5 to 67 shapes) and the demo's skills trials (2-3 shapes)
# (docs/BENCHMARKS.md, "Memory and time over whole studies on a bf16 machine"). A skills trial
# sees a few shapes; a classify trial of 1,770 texts of 10-90 tokens at batch 4 sees 67. In fp32
# the growth stops early (the thesis classify trial: 1,392 MB at 8 steps, 1,663 from step 50 to
# 150) within what the estimate already holds (1,695 MB): none counted. 8-bit takes 16-bit's
# share (not fitted apart). Not on CUDA.
SHAPE_SHARE = {("bf16", 16): 0.136, ("bf16", 8): 0.136, ("bf16", 4): 0.105}


def _host_key(amp: torch.dtype | None) -> str:
    """The compute precision's name in ``HOST_QUANT_BYTES`` and ``SHAPE_SHARE``: fp16, as
    bf16, computes at 2 bytes."""
    return "fp32" if amp is None else "bf16"


def host_quant_bytes(cfg: TrialConfig, amp: torch.dtype | None) -> float:
    """Bytes a CPU process holds per quantized weight beyond the stored ones (``HOST_QUANT_BYTES``);
    0 on CUDA."""
    return 0.0 if torch.cuda.is_available() else HOST_QUANT_BYTES[cfg.quant.bits, _host_key(amp)]


def shapes_bytes(cfg: TrialConfig, facts, graph, amp: torch.dtype | None) -> float:
    """What a CPU process keeps of the distinct micro-batch shapes it trains on
    (``SHAPE_SHARE`` x the sum of each shape's kept activations, ``graph``:
    ``study.cost.activations.saved_bytes``; ``facts``: ``study.cost.estimate.ModelFacts``);
    0 on CUDA."""
    share = SHAPE_SHARE.get((_host_key(amp), cfg.quant.bits))
    if torch.cuda.is_available() or not share:
        return 0.0
    return share * sum(graph.total(*shape) for shape in workload(cfg, facts.tokenizer).shapes)
