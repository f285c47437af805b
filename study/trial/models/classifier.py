"""A causal LM's body with a linear ``score`` head over its last real token: text -> label logits.

    model = SequenceClassifier(lm, num_labels=4, seed=0)   # lm: load_model(...)'s causal LM
    logits = model(input_ids, attention_mask)               # (batch, num_labels)

The layout is transformers' ``...ForSequenceClassification`` (``LlamaForSequenceClassification``,
``GPT2ForSequenceClassification``, ...): the body under the model's ``base_model_prefix``
(``model``, ``transformer``, ``gpt_neox``), a bias-free ``score`` linear of hidden size x labels,
initialised as theirs (normal, std ``initializer_range``). So the state-dict keys are theirs, a
PEFT ``SEQ_CLS`` adapter with ``modules_to_save=["score"]`` moves between the two, and this
model's logits equal theirs (tests/test_classify_head.py, on Llama, Qwen2, GPT-2 and GPT-NeoX).
One model serves every architecture, with or without a transformers class, because it is built
around the causal LM ``load_model`` already placed and quantized (the ``lm_head`` is dropped).

Two choices differ from transformers' forward, neither changing a right-padded batch's logits:
the last token is found from the attention mask, not by looking for the pad id (a text may
contain the pad token: SmolLM2's is its end-of-text token), and the position ids come from the
mask, so a left-padded row sees the positions it would alone. The head runs on the pooled
states only, not on every position.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD = "score"  # the head's module name: transformers' and PEFT's (modules_to_save)


class SequenceClassifier(nn.Module):
    """``lm``'s body and a fresh ``score`` head of ``num_labels`` outputs (fp32, seeded)."""

    def __init__(self, lm: nn.Module, num_labels: int, seed: int = 0) -> None:
        super().__init__()
        self.base_model_prefix = lm.base_model_prefix
        setattr(self, self.base_model_prefix, lm.base_model)
        self.config = lm.config
        self.config.num_labels = num_labels
        text = self.config.get_text_config()
        body_param = next(lm.base_model.parameters())
        self.score = nn.Linear(text.hidden_size, num_labels, bias=False,
                               device=body_param.device, dtype=torch.float32)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        std = getattr(text, "initializer_range", 0.02)
        with torch.no_grad():
            init = torch.randn(self.score.weight.shape, generator=generator) * std
            self.score.weight.copy_(init)

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def get_output_embeddings(self) -> None:
        return None  # not a language model: no vocabulary head (lora_impl never targets score)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.base_model.gradient_checkpointing_enable(**kwargs)

    def enable_input_require_grads(self) -> None:
        self.base_model.enable_input_require_grads()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: object) -> torch.Tensor:
        """Label logits (batch, num_labels) at each row's last token with mask 1."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=positions, use_cache=False).last_hidden_state
        steps = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (steps * attention_mask.to(steps.dtype)).argmax(-1)
        pooled = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]
        return self.score(pooled.to(self.score.weight.dtype))


def as_classifier(lm: nn.Module, num_labels: int, seed: int = 0) -> SequenceClassifier:
    """The classifier around ``lm`` (which it takes over: use the classifier, not ``lm``)."""
    return SequenceClassifier(lm, num_labels, seed)
