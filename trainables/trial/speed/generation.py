"""The fast evaluation's generation: dev rows longest first, in batches sized from the GPU memory left (halved on
OOM), put back in file order; the no-repeat n-gram ban as tensor ops. What differs between model families (the
cache beam search reorders, the memory one row needs) comes from the family's hooks."""

from __future__ import annotations

from typing import Any, Callable

# Share of the memory left that generation batches may plan to fill, and the slack kept back (allocator
# fragmentation, the scores' temporaries).
BUDGET_SHARE, BUDGET_SLACK = 0.7, 2**30
MAX_OOM_NOTES = 20


def length_sorted_batches(lengths: list[int], rows_for) -> list[list[int]]:
    """Row indices, longest first, cut into batches of at most `rows_for(longest length in the batch)` rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        n = max(1, rows_for(lengths[order[start]]))
        batches.append(order[start:start + n])
        start += n
    return batches


def free_under_cap(device, cap_gib: float | None) -> float:
    """Bytes this process may still allocate on `device`: the GPU's free memory, and no more than what the trial's
    allocator cap leaves (None: no cap)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return min(free, cap_gib * 2**30 - torch.cuda.memory_allocated(device)) if cap_gib else free


def rows_budget(row_bytes: Callable[[int], int], cap_gib: float | None, max_rows: int, configured: int, device):
    """(rows_for(input length) -> rows per generation batch, how it was sized): from the GPU memory free under
    the cap and `row_bytes(input length)`, at most `max_rows`; on the CPU 4x the configured evaluation batch."""
    cap_rows = max(configured, max_rows)
    if getattr(device, "type", "cpu") != "cuda":
        return lambda n_in: configured * 4, "cpu: 4x the configured batch"
    budget = max(0, free_under_cap(device, cap_gib) * BUDGET_SHARE - BUDGET_SLACK)

    def rows(n_in: int) -> int:
        return int(min(cap_rows, max(1, budget // row_bytes(n_in))))

    return rows, f"from {budget / 2**30:.1f} GiB free for generation"


def no_repeat_ngram_processor(ngram_size: int):
    """transformers' NoRepeatNGramLogitsProcessor with the same bans, computed as tensor ops (older releases, 5.17
    on the lent GPU among them, may loop over every hypothesis in Python at every step, which grows with the batch)."""
    import torch
    from transformers import LogitsProcessor

    class TensorNoRepeatNGram(LogitsProcessor):
        def __call__(self, input_ids, scores):
            cur_len = input_ids.shape[-1]
            if cur_len < ngram_size:
                return scores
            prefix = input_ids[:, cur_len + 1 - ngram_size:]
            windows = input_ids.unfold(1, ngram_size, 1)
            matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
            vocab = scores.shape[-1]
            banned = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
            banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
            return scores.masked_fill(banned[:, :vocab], -float("inf"))

    return TensorNoRepeatNGram()


def generation_kwargs(gen_model, max_len: int, beams: int) -> dict[str, Any]:
    """generate()'s arguments, with the no-repeat n-gram ban as tensor ops (see no_repeat_ngram_processor)."""
    gen_kwargs: dict[str, Any] = {"max_length": max_len, "num_beams": beams}
    ngram = gen_model.generation_config.no_repeat_ngram_size or 0
    if ngram:
        from transformers import LogitsProcessorList

        gen_kwargs.update(no_repeat_ngram_size=0, logits_processor=LogitsProcessorList([no_repeat_ngram_processor(ngram)]))
    return gen_kwargs


def generate_in_file_order(gen_model, rows, generate_rows, gen_kwargs: dict[str, Any], rows_for, new_cache,
                           pad_id: int) -> tuple[Any, list[int], list[str]]:
    """(ids of every row in file order as one padded array, rows per batch used, notes): longest rows first in
    batches of `rows_for(length)` rows, a batch that runs out of memory split in two. `generate_rows(model, rows,
    pad_id, **kwargs)`: the family's generation from tokenized rows (its inputs, its padding side, the summary part
    of each output); `new_cache()`: a fresh past_key_values for one generate() call (the family's, None for the
    default)."""
    import torch

    preds: list[Any] = [None] * len(rows)
    pending = length_sorted_batches([len(r["input_ids"]) for r in rows], rows_for)
    sizes, notes = [], []
    while pending:
        batch_idx = pending.pop(0)
        try:
            out = generate_rows(gen_model, [rows[i] for i in batch_idx], pad_id, **gen_kwargs,
                                past_key_values=new_cache())
        except torch.OutOfMemoryError:
            if len(batch_idx) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch_idx) // 2
            pending[:0] = [batch_idx[:half], batch_idx[half:]]
            notes += [f"generation OOM at {len(batch_idx)} rows: halved"] if len(notes) < MAX_OOM_NOTES else []
            continue
        sizes.append(len(batch_idx))
        for j, i in enumerate(batch_idx):
            preds[i] = out[j]
    return padded(preds, pad_id), sizes, notes


def padded(preds, pad: int):
    import numpy as np

    width = max(len(x) for x in preds)
    pred_array = np.full((len(preds), width), pad, dtype=np.int64)
    for i, x in enumerate(preds):
        pred_array[i, :len(x)] = x
    return pred_array
