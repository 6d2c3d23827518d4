"""The fast evaluation (speed `fast_eval`): what the family Trainer's evaluate returns (loss, compute_metrics' scores,
runtime), computed faster, plus its own EvalRecord of how (reported as eff_speed_eval_*).

The dev loss is the training model's, grouped into the config's own evaluation batches in file order, so
`eval_loss` keeps its plain meaning; the summaries are generated from the merged half-precision copy (merged.py)
where it matches the training model's logits, else from the training model, in length-sorted batches
(generation.py), and scored in file order like the plain path's.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from trainables.trial.speed.generation import (free_under_cap, generate_in_file_order, generation_kwargs,
                                               length_sorted_batches, rows_budget)
from trainables.trial.speed.merged import MERGE_TOLERANCE, merge_error, merged_copy
from trainables.trial.speed.records import EvalRecord

if TYPE_CHECKING:
    from trainables.trial.speed.records import SpeedPlan

log = logging.getLogger(__name__)


def evaluate(trainer, p: "SpeedPlan", family, dataset, metric_key_prefix: str = "eval") -> tuple[dict[str, float], EvalRecord]:
    """(the metrics the family Trainer's evaluate would return, this evaluation's EvalRecord)."""
    started = time.time()
    model = trainer.model
    was_training = model.training
    model.eval()
    rows = [dataset[i] for i in range(len(dataset))]
    eval_loss = dev_loss(trainer, rows, p.chunked_loss, align=family.token_logits_and_labels, cap_gib=p.memory_gib)
    gen_model, merged, notes = generation_model(trainer, rows, p.memory_gib)
    predictions, batch_rows, gen_notes = _generate(trainer, p, family, gen_model, rows)
    if gen_model is not model:
        del gen_model  # the merged copy: free its memory before scoring
        _empty_cuda_cache(model)
    metrics = _evaluation_metrics(trainer, predictions, eval_loss, metric_key_prefix, started, len(rows))
    if was_training:
        model.train()
    record = EvalRecord(eval_merged=merged, eval_batch_rows=batch_rows, eval_s=round(time.time() - started, 2),
                        notes=(*notes, *gen_notes))
    return metrics, record


def _device_of(model):
    return next(model.parameters()).device


def _empty_cuda_cache(model) -> None:
    import torch

    if _device_of(model).type == "cuda":
        torch.cuda.empty_cache()


def _on_device(batch, device, keys=("input_ids", "attention_mask", "labels")) -> dict[str, Any]:
    return {k: batch[k].to(device) for k in keys}


def _input_lengths(rows) -> list[int]:
    return [len(r["input_ids"]) for r in rows]


def _precision(args) -> str:
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def loss_rows_that_fit(model, rows, configured: int, cap_gib: float | None) -> int:
    """Rows per dev-loss batch: up to max(configured, 16) on a GPU, fewer where their logits would not fit in the
    memory left under the cap (a 150k-vocabulary causal LM's logits over 1,184 tokens are ~0.7 GiB a row in bf16, and
    the loss takes fp32 copies: 16 rows overran a 20 GiB cap beside a 1.5B model, measured on the H200). The per-row
    sums are the same whatever the batch, so eval_loss does not change; on the CPU, the configured batch."""
    device = _device_of(model)
    if device.type != "cuda":
        return configured
    vocab = model.get_output_embeddings().weight.shape[0]
    longest = max((len(r["labels"]) for r in rows), default=1)
    row_bytes = longest * vocab * (2 + 4 + 4)  # the logits, their fp32 copy, the log-softmax
    return int(max(1, min(max(configured, 16), free_under_cap(device, cap_gib) * 0.6 // row_bytes)))


def dev_loss(trainer, rows, chunked: bool = False, align=None, cap_gib: float | None = None) -> float:
    """The training model's dev loss per row, regrouped into the plain path's file-order batches (so
    `eval_loss` keeps its plain meaning), computed in length-sorted batches that fit (loss_rows_that_fit);
    `chunked`: the per-token cross-entropy without a full fp32 copy of the logits (losses.py); `align(outputs,
    labels)` -> (logits, labels) token for token (the family's token_logits_and_labels: a causal LM's shift by one),
    None: as they are."""
    import numpy as np
    import torch

    from trainables.trial.speed.losses import token_cross_entropy

    model, collate = trainer.model, trainer.data_collator
    device = _device_of(model)
    configured = trainer.args.per_device_eval_batch_size
    sums, counts = np.zeros(len(rows)), np.zeros(len(rows))
    loss_rows = loss_rows_that_fit(model, rows, configured, cap_gib)
    with torch.no_grad():
        for batch_idx in length_sorted_batches(_input_lengths(rows), lambda n: loss_rows):
            batch = collate([rows[i] for i in batch_idx])
            labels = batch["labels"].to(device)
            # Decoder inputs from the collator rather than labels: given labels the model would also compute its
            # own loss, on a full fp32 log-softmax of the batch's logits (a decoder-only model needs neither).
            keys = ("input_ids", "attention_mask", *(("decoder_input_ids",) if "decoder_input_ids" in batch else
                                                     ("labels",) if model.config.is_encoder_decoder else ()))
            with trainer.compute_loss_context_manager():
                outputs = model(**_on_device(batch, device, keys))
            logits, aligned = align(outputs, labels) if align else (outputs.logits, labels)
            ce = token_cross_entropy(logits, aligned, chunked=chunked).sum(1)
            sums[batch_idx] = ce.double().cpu().numpy()
            counts[batch_idx] = (labels != -100).sum(1).cpu().numpy()
            del logits, outputs
    losses = [sums[s:s + configured].sum() / max(1, counts[s:s + configured].sum())
              for s in range(0, len(rows), configured)]
    sizes = [len(range(s, min(s + configured, len(rows)))) for s in range(0, len(rows), configured)]
    return float(np.average(losses, weights=sizes))


def _checked_copy(trainer, rows):
    """(the merged copy, "yes (...)") if its logits match the training model's on the two shortest rows, else
    (None, why not)."""
    model = trainer.model
    candidate = merged_copy(model, _precision(trainer.args))
    lengths = _input_lengths(rows)
    shortest = sorted(range(len(rows)), key=lambda i: lengths[i])[:2]
    probe = _on_device(trainer.data_collator([rows[i] for i in shortest]), _device_of(model))
    with trainer.compute_loss_context_manager():
        err = merge_error(model, candidate, probe)
    if err <= MERGE_TOLERANCE:
        return candidate, f"yes (logits within {err:.1e})"
    return None, f"no: merged copy's logits differ by {err:.2f} (relative)"


GENERATION_RESERVE_GIB = 1.0  # left for a generation batch beside the copy (rows_budget sizes the batch to what is left)


def copy_does_not_fit(model, cap_gib: float | None) -> str | None:
    """Why the merged copy is not built on this GPU, or None where it fits (placement.merged_copy_fits, the plan's
    rule, with what the allocator holds now): a 10.7B model's bf16 copy (~20 GiB) does not fit a 24 GB card beside
    its 4-bit training model. On the CPU (smoke) the copy is always tried. `cap_gib`: the trial's allocator cap,
    None for the whole card."""
    import torch

    from trainables.compat import is_4bit_param
    from trainables.trial.placement import merged_copy_fits

    device = _device_of(model)
    if device.type != "cuda":
        return None
    values = sum(p.numel() * (2 if is_4bit_param(p) else 1) for p in model.parameters())
    copy_gib, resident_gib = values * 2 / 2**30, torch.cuda.memory_allocated(device) / 2**30
    limit = cap_gib or torch.cuda.get_device_properties(device).total_memory / 2**30
    if merged_copy_fits(resident_gib, copy_gib, GENERATION_RESERVE_GIB, limit):
        return None
    return (f"no: the merged copy ({copy_gib:.1f} GiB) does not fit beside the training model ({resident_gib:.1f} GiB) "
            f"under {limit:.1f} GiB")


def generation_model(trainer, rows, cap_gib: float | None = None) -> tuple[Any, str, tuple[str, ...]]:
    """(the model to generate from, eff_speed_eval_merged, notes): the checked merged copy, or the training model
    itself where the copy does not fit, can't be made or differs."""
    too_big = copy_does_not_fit(trainer.model, cap_gib)
    if too_big:
        log.warning("fast evaluation: %s", too_big)
        return trainer.model, too_big, (f"evaluation generated from the training model ({too_big})",)
    try:
        copy_, merged = _checked_copy(trainer, rows)
    except Exception as err:  # noqa: BLE001 - any failure to merge falls back to the training model
        copy_, merged = None, f"no: {type(err).__name__}: {str(err)[:120]}"
    if copy_ is not None:
        return copy_, merged, ()
    log.warning("fast evaluation: %s", merged)
    return trainer.model, merged, (f"evaluation generated from the training model ({merged})",)


def _generate(trainer, p: "SpeedPlan", family, gen_model, rows) -> tuple[Any, str, list[str]]:
    """(generated ids in file order, eff_speed_eval_batch_rows, notes), with the family's beam-search cache and
    per-row memory estimate."""
    model, args = trainer.model, trainer.args
    device = _device_of(model)
    beams = args.generation_num_beams or model.generation_config.num_beams or 1
    max_len = args.generation_max_length or model.generation_config.max_length
    dtype_bytes = 4 if _precision(args) == "fp32" or device.type == "cpu" else 2

    def row_bytes(n_in: int) -> int:
        return family.generation_row_bytes(gen_model.config, n_in, beams, max_len, dtype_bytes)

    rows_for, how = rows_budget(row_bytes, p.memory_gib, p.max_eval_rows, args.per_device_eval_batch_size, device)
    ids, sizes, notes = generate_in_file_order(
        gen_model, rows, family.generate_rows, generation_kwargs(gen_model, max_len, beams), rows_for,
        lambda: family.generation_cache(beams), trainer.processing_class.pad_token_id)
    return ids, f"{min(sizes)}-{max(sizes)} rows in {len(sizes)} batches ({how})", notes


def _evaluation_metrics(trainer, predictions, eval_loss: float, prefix: str, started: float,
                        n_rows: int) -> dict[str, float]:
    """compute_metrics' scores plus loss, runtime and epoch, named as the Trainer's evaluate names them."""
    from transformers import EvalPrediction

    metrics = trainer.compute_metrics(EvalPrediction(predictions=predictions, label_ids=None))
    metrics = {f"{prefix}_{k}": v for k, v in metrics.items()}
    metrics[f"{prefix}_loss"] = eval_loss
    runtime = time.time() - started
    metrics[f"{prefix}_runtime"] = round(runtime, 4)
    metrics[f"{prefix}_samples_per_second"] = round(n_rows / runtime, 3) if runtime else math.inf
    if trainer.state.epoch is not None:
        metrics["epoch"] = trainer.state.epoch
    return metrics
