"""Generating summaries with a seq2seq model: the config's generation settings, inputs framed and outputs decoded
as in training (framing.py), for predict, the untrained-baseline check and export's checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainables.data import model_inputs
from trainables.trial.inference import generation_kwargs

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig


def generate_summaries(model, tokenizer, dialogues: list[str], exp: ExperimentConfig, framing=None,
                       batch_size: int | None = None) -> list[str]:
    """Cleaned summaries for `dialogues`: the config's prefix, lengths, beams and penalties; inputs framed, the
    decoder started and stopped as in training (probed here unless `framing` is given); special tokens removed,
    speaker tags and masks kept. Batches default to the config's evaluation batch."""
    from trainables.trial.families.seq2seq.framing import probe_framing
    from trainables.trial.speed import sdpa_without_cudnn

    tok, gen = exp.tokenizer, exp.generation
    framing = framing or probe_framing(tokenizer, model.config)
    framing.apply_to(model)
    device = next(model.parameters()).device
    inputs = framing.encode_inputs(tokenizer, model_inputs(dialogues, tok.input_prefix), tok.encoder_max_len)
    batch_size = batch_size or exp.training.per_device_eval_batch_size
    model.eval()
    no_cudnn = exp.speed.enabled and exp.speed.no_cudnn_attention and device.type == "cuda"  # as the trial evaluated
    out: list[str] = []
    for start in range(0, len(inputs), batch_size):
        with sdpa_without_cudnn(no_cudnn):
            out += framing.decode(tokenizer, generate_rows(model, inputs[start:start + batch_size], framing.pad_id,
                                                           **generation_kwargs(gen)))
    return out


def generate_rows(model, inputs: list[list[int]], pad_id: int, **kwargs) -> list[list[int]]:
    """generate() on one batch of encoder inputs, right-padded with `pad_id`; the generated rows as lists (the
    decoder's start token first: Framing.decode drops it)."""
    import torch

    device = next(model.parameters()).device
    width = max(len(r) for r in inputs)
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in inputs], device=device)
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in inputs], device=device)
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs).tolist()
