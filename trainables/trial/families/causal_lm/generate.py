"""Generating summaries with a causal LM: prompts left-padded into batches, only the new tokens kept.

A decoder-only model continues its input, so a batch of prompts of different lengths is padded on the LEFT (every
prompt then ends where generation starts; the attention mask hides the padding and transformers derives the
positions from it), and the output's first `width` tokens, the padded prompts, are cut off before decoding.
Training rows pad on the right (the collator); that is the only difference, and it never reaches the loss.

The config's generation.max_length and min_length count the summary's tokens, as they do for seq2seq: here they
are max_new_tokens and min_new_tokens. generation.no_repeat_ngram_size is transformers' own, which for a decoder-only
model also counts the prompt's n-grams (`check` warns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig, GenerationSection


def generation_kwargs(gen: GenerationSection) -> dict[str, Any]:
    """The config's generation section as generate()/GenerationConfig arguments, lengths in new tokens. The length
    penalty only acts in beam search (transformers refuses to save one set for greedy decoding)."""
    return {"num_beams": gen.num_beams, "max_new_tokens": gen.max_length, "min_new_tokens": gen.min_length,
            "length_penalty": gen.length_penalty if gen.num_beams > 1 else 1.0,
            "no_repeat_ngram_size": gen.no_repeat_ngram_size}


def prompt_of(row: dict[str, Any]) -> list[int]:
    """A tokenized row's prompt: its ids before the first label (a training or dev row holds prompt + summary + EOS);
    a row without labels (the test set) is all prompt."""
    ids, labels = list(row["input_ids"]), row.get("labels")
    if labels is None:
        return ids
    start = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    return ids[:start]


def generate_batch(model, prompts: list[list[int]], pad_id: int, **kwargs) -> list[list[int]]:
    """generate() on one batch of prompts, left-padded with `pad_id`; each row's new tokens only, as lists (padded
    after an early EOS; Framing.decode cuts there). A `max_length` among `kwargs` (the speed layer passes the
    config's generation.max_length so) counts new tokens, as the config means it."""
    import torch

    if "max_length" in kwargs:
        kwargs["max_new_tokens"] = kwargs.pop("max_length")
    if kwargs.get("past_key_values", 0) is None:  # the speed layer's "transformers' own cache"
        del kwargs["past_key_values"]
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad_id, **kwargs)
    return out[:, width:].tolist()


def generate_summaries(model, tokenizer, dialogues: list[str], exp: ExperimentConfig, framing=None,
                       batch_size: int | None = None) -> list[str]:
    """Cleaned summaries for `dialogues`, in order: prompts built as in training (probed here unless `framing` is
    given), longest first in batches of `batch_size` (the config's evaluation batch unless given), the config's
    generation settings; only each summary decoded, special tokens stripped, speaker tags and masks kept."""
    from trainables.trial.families.causal_lm.prompt import probe_prompt
    from trainables.trial.speed import sdpa_without_cudnn

    framing = framing or probe_prompt(tokenizer, exp)
    framing.apply_to(model)
    prompts = framing.encode_prompts(tokenizer, dialogues, exp.tokenizer.encoder_max_len)
    batch_size = batch_size or exp.training.per_device_eval_batch_size
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # less padding; the order is put back
    device = next(model.parameters()).device
    no_cudnn = exp.speed.enabled and exp.speed.no_cudnn_attention and device.type == "cuda"  # as the trial evaluated
    model.eval()
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        picked = order[start:start + batch_size]
        with sdpa_without_cudnn(no_cudnn):
            rows = generate_batch(model, [prompts[i] for i in picked], framing.pad_id, **generation_kwargs(exp.generation))
        for i, text in zip(picked, framing.decode(tokenizer, rows)):
            out[i] = text
    return out


def generation_row_bytes(config, input_len: int, beams: int, gen_len: int, dtype_bytes: int) -> int:
    """A generous estimate of the GPU memory one dialogue needs while beam-searching: every beam's KV cache of
    prompt plus generated tokens in every layer (and a reordered copy), the beams' fp32 scores, the prompt's pass."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_width = (getattr(config, "num_key_value_heads", None) or heads) * (getattr(config, "head_dim", None) or hidden // heads)
    cache = beams * config.num_hidden_layers * 2 * kv_width * (input_len + gen_len) * dtype_bytes * 2
    scores = beams * config.vocab_size * 4 * 4
    prompt_pass = beams * input_len * (hidden + 2 * config.intermediate_size) * dtype_bytes
    return cache + scores + prompt_pass
