"""Generating summaries with a config's generation settings: for predictions on the test set and for
scoring a model outside the Trainer (the untrained-baseline check)."""

from __future__ import annotations

from typing import Any

from trainables.data import model_inputs


def generate_summaries(model, tokenizer, dialogues: list[str], exp: dict[str, Any], batch_size: int | None = None,
                       framing=None) -> list[str]:
    """Cleaned summaries for `dialogues`: the config's prefix, lengths, beams and penalties; inputs framed, the
    decoder started and stopped as in training (trainables.framing; probed here unless given); special tokens
    removed, speaker tags and masks kept. Batches default to the config's evaluation batch."""
    import torch

    from trainables.framing import probe_framing

    tok, gen = exp["tokenizer"], exp["generation"]
    framing = framing or probe_framing(tokenizer, model.config)
    framing.apply_to(model)
    device = next(model.parameters()).device
    inputs = framing.encode_inputs(tokenizer, model_inputs(dialogues, tok["input_prefix"]), tok["encoder_max_len"])
    batch_size = batch_size or exp["training"]["per_device_eval_batch_size"]
    model.eval()
    out: list[str] = []
    for start in range(0, len(inputs), batch_size):
        rows = inputs[start:start + batch_size]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [framing.pad_id] * (width - len(r)) for r in rows], device=device)
        attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        with torch.no_grad():
            ids = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_length=gen["max_length"],
                min_length=gen["min_length"], num_beams=gen["num_beams"], length_penalty=gen["length_penalty"],
                no_repeat_ngram_size=gen["no_repeat_ngram_size"],
            )
        out += framing.decode(tokenizer, ids)
    return out
