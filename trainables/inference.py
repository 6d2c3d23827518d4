"""Generating summaries with a config's generation settings: for predictions on the test set and for
scoring a model outside the Trainer (the untrained-baseline check)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainables.data import model_inputs

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig, GenerationSection


def generation_kwargs(gen: GenerationSection) -> dict[str, Any]:
    """A config's `generation` section as `generate()`/GenerationConfig arguments: one mapping for the Trainer's
    evaluation, predict and export. The length penalty only acts in beam search; with one beam it is left at its
    default, since transformers refuses to save a generation config that sets it for greedy decoding."""
    return {"num_beams": gen.num_beams, "max_length": gen.max_length, "min_length": gen.min_length,
            "length_penalty": gen.length_penalty if gen.num_beams > 1 else 1.0,
            "no_repeat_ngram_size": gen.no_repeat_ngram_size}


def generate_summaries(model, tokenizer, dialogues: list[str], exp: ExperimentConfig, batch_size: int | None = None,
                       framing=None) -> list[str]:
    """Cleaned summaries for `dialogues`: the config's prefix, lengths, beams and penalties; inputs framed, the
    decoder started and stopped as in training (trainables.framing; probed here unless given); special tokens
    removed, speaker tags and masks kept. Batches default to the config's evaluation batch."""
    import torch

    from trainables.framing import probe_framing
    from trainables.speed import sdpa_without_cudnn

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
        rows = inputs[start:start + batch_size]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [framing.pad_id] * (width - len(r)) for r in rows], device=device)
        attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        with torch.no_grad(), sdpa_without_cudnn(no_cudnn):
            ids = model.generate(input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs(gen))
        out += framing.decode(tokenizer, ids)
    return out
