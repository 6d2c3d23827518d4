"""Generating summaries with a config's generation settings: for predictions on the test set and for
scoring a model outside the Trainer (the untrained-baseline check)."""

from __future__ import annotations

from typing import Any

from trainables.data import model_inputs
from trainables.metrics import clean_summary


def generate_summaries(model, tokenizer, dialogues: list[str], exp: dict[str, Any], batch_size: int | None = None) -> list[str]:
    """Cleaned summaries for `dialogues`: the config's prefix, lengths, beams and penalties; special tokens
    removed, speaker tags and masks kept. Batches default to the config's evaluation batch."""
    import torch

    tok, gen = exp["tokenizer"], exp["generation"]
    strip = list(tokenizer.all_special_tokens)
    device = next(model.parameters()).device
    inputs = model_inputs(dialogues, tok["input_prefix"])
    batch_size = batch_size or exp["training"]["per_device_eval_batch_size"]
    model.eval()
    out: list[str] = []
    for start in range(0, len(inputs), batch_size):
        enc = tokenizer(inputs[start:start + batch_size], max_length=tok["encoder_max_len"], truncation=True,
                        padding=True, return_tensors="pt", return_token_type_ids=False).to(device)
        with torch.no_grad():
            ids = model.generate(
                **enc, max_length=gen["max_length"], min_length=gen["min_length"], num_beams=gen["num_beams"],
                length_penalty=gen["length_penalty"], no_repeat_ngram_size=gen["no_repeat_ngram_size"],
            )
        out += [clean_summary(t, strip) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return out
