"""Speed-ups over the plain Seq2SeqTrainer recipe, each on by default, recorded, and switchable off.

Where the time goes (BENCHMARKS.md, "Profile"): at real size most of a trial is dev-set evaluation, i.e. beam
search through a 4-bit QLoRA model in small batches of the config's `per_device_eval_batch_size`, in file
order. Every decoding step dequantizes each 4-bit weight and runs the LoRA branch as extra small matmuls, so
generation is launch- and dequantization-bound. Training steps are launch-bound too (a larger micro-batch
costs little more time per step).

What this module changes, all without changing what a config means (model, 4-bit training, LoRA, effective
batch, beams, lengths, evaluation cadence, early stopping):

- `fast_eval`: each evaluation generates from a temporary copy of the model in the run's half precision with
  the 4-bit base dequantized and the LoRA (and trainable-token rows) merged in; the copy is checked against
  the training model's logits on a few dev rows first and dropped after the evaluation. Dev rows are generated
  longest first in batches sized from the free GPU memory (so short dialogues share large batches) and put
  back in file order before scoring; beam search skips reordering the cross-attention cache (equal across a
  dialogue's beams). The dev loss is the training model's, grouped into the config's own
  evaluation batches, so `eval_loss` keeps its plain meaning.
- `micro_batch`: a larger per-device batch with less accumulation at the same effective batch (every split of
  the effective batch down to the configured micro-batch, `batch_candidates`), under a per-process GPU memory cap (`memory_gib`) so that a batch that would not
  fit a 24 GB card falls back, step by step, to the configured one.
- `chunked_loss`: the training loss (and the dev loss) computed from the logits in their own dtype, one chunk
  of rows at a time in fp32 (trainables.losses), instead of on a full fp32 copy with an fp32 log-softmax and
  fp32 gradients on mT5's 250,112-token vocabulary. Same loss and gradients to float rounding (tests/test_losses.py
  states the bounds). Measured on an H100 it did not lower the mT5 configs' peak (16.5 GiB at 4 x 4 against 16.6
  with the plain loss): their activations at 512-1024 input tokens fill the 20 GiB cap first, so the larger
  micro-batches still step down (BENCHMARKS.md).
- `tf32` matmuls for what still runs in fp32.
- `no_cudnn_attention`: scaled-dot-product attention may use flash, memory-efficient or math kernels, not cuDNN's.
  With torch 2.11 on an H100, SDPA picked cuDNN for bf16/fp16 and each call spent ~7 ms of CPU building a graph for
  the new shape (every batch in training, every decoding step in generation): 70-80% of the CPU time of a step.

`speed: off` in an experiment's YAML (or `speed: {enabled: false}`) gives the plain path. Every decision is
reported with the trial's results as `eff_speed_*`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

log = logging.getLogger(__name__)

# Largest relative difference between the training model's logits and its merged copy's that still counts
# as the same model (bf16 rounding of merged weights is ~1e-2; a wrong merge is ~1).
MERGE_TOLERANCE = 0.08


@dataclass
class SpeedPlan:
    enabled: bool
    fast_eval: bool
    micro_batch: bool
    chunked_loss: bool
    tf32: bool
    no_cudnn_attention: bool
    memory_gib: float | None
    max_eval_rows: int
    # filled in as the trial runs
    configured_batch: tuple[int, int] = (0, 0)
    batch_candidates: list[tuple[int, int]] = field(default_factory=list)
    attn_implementation: str = ""
    optimizer: str = ""
    sdpa_backends: str = ""
    eval_merged: str = ""  # "yes" | why not
    eval_batch_rows: str = ""
    eval_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_metrics(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = " | ".join(self.notes)
        d["configured_batch"] = "x".join(map(str, self.configured_batch))
        d["batch_candidates"] = ", ".join(f"{b}x{a}" for b, a in self.batch_candidates)
        return {f"eff_speed_{k}": v for k, v in d.items()}


def plan(exp: "ExperimentConfig", settings, cuda: bool) -> SpeedPlan:
    """Decide the speed-ups for one trial and apply the micro-batch choice to `settings` (EffectiveSettings)."""
    o = exp.speed
    on = o.enabled
    p = SpeedPlan(enabled=on, fast_eval=on and o.fast_eval, micro_batch=on and o.micro_batch,
                  chunked_loss=on and o.chunked_loss, tf32=on and o.tf32 and cuda,
                  no_cudnn_attention=on and o.no_cudnn_attention and cuda,
                  memory_gib=o.memory_gib if on and cuda else None,
                  max_eval_rows=o.max_eval_rows)
    bs, accum = settings.train_batch_size, settings.gradient_accumulation_steps
    p.configured_batch = (bs, accum)
    if p.micro_batch:
        p.batch_candidates = batch_candidates(bs, accum)
        if not cuda:
            p.batch_candidates = [(bs, accum)]
            p.notes.append("no CUDA GPU: configured micro-batch kept")
        settings.train_batch_size, settings.gradient_accumulation_steps = p.batch_candidates[0]
    settings.speed = p
    return p


def batch_candidates(batch: int, accumulation: int) -> list[tuple[int, int]]:
    """The micro-batch splits a trial tries, largest first: every m x (effective / m) with m >= the configured
    micro-batch at the same effective batch (9 x 2 as well as 18 x 1 and 6 x 3: the loss is exact for any split,
    see seq2seq.token_mean_loss); an OOM (under the memory cap) steps down this list to the configured batch.
    The pre-flight plan (trainables.plan) walks the same list to predict which one a trial will run."""
    effective = batch * accumulation
    return [(m, effective // m) for m in range(effective, batch - 1, -1) if effective % m == 0]


def halve_batch(batch_size: int, accumulation: int) -> tuple[int, int]:
    """OOM back-off below the configured batch: half the per-device batch, twice the accumulation, same
    effective batch (odd batches round down)."""
    if batch_size <= 1:
        raise RuntimeError(
            "CUDA out of memory even at per-device batch 1: lower tokenizer.encoder_max_len / decoder_max_len, "
            "turn on training.gradient_checkpointing or qlora.load_in_4bit, or use a card with more memory"
        )
    return batch_size // 2, accumulation * 2


def apply_memory_cap(p: SpeedPlan, placed_cap_gib: float | None = None) -> None:
    """Cap this process's CUDA allocations at `memory_gib`, so that a too-large micro-batch raises OOM here
    (and steps down) instead of succeeding on an 80 GB card and failing on a 24 GB one. A tighter cap already
    set for a trial packed onto a shared card (trainables.plan) is kept, and generation batches size to it."""
    import torch

    if not (p.memory_gib and torch.cuda.is_available()):
        return
    if placed_cap_gib and placed_cap_gib <= p.memory_gib:
        p.notes.append(f"kept the packed trial's GPU memory cap ({placed_cap_gib:.1f} GiB)")
        p.memory_gib = placed_cap_gib
        return
    if not p.micro_batch:
        return
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, p.memory_gib * 2**30 / total), 0)


def back_off(p: SpeedPlan | None, settings) -> tuple[int, int] | None:
    """After an OOM: the next smaller micro-batch at the same effective batch, or None (use the plain back-off)."""
    if p is None or not p.batch_candidates:
        return None
    current = (settings.train_batch_size, settings.gradient_accumulation_steps)
    smaller = [c for c in p.batch_candidates if c[0] < current[0]]
    if not smaller:
        return None
    p.notes.append(f"micro-batch {current[0]}x{current[1]} ran out of memory (cap {p.memory_gib} GiB): "
                   f"{smaller[0][0]}x{smaller[0][1]}")
    return smaller[0]


def training_kwargs(p: SpeedPlan) -> dict[str, Any]:
    """Extra Seq2SeqTrainingArguments."""
    return {"tf32": True} if p.tf32 else {}


def attention_backends(p: SpeedPlan):
    """A context manager for the trial's training and evaluation: SDPA without cuDNN where the plan says so (torch's
    own choice otherwise); flags restored on exit, so an in-process caller (a benchmark's next run) is unaffected."""
    p.sdpa_backends = "flash, efficient, math (no cuDNN)" if p.no_cudnn_attention else "torch default"
    return sdpa_without_cudnn(p.no_cudnn_attention)


def sdpa_without_cudnn(on: bool):
    """torch's SDPA limited to its flash, memory-efficient and math kernels while the context is open (`on`), else
    nothing changed. One switch for training, evaluation and predict."""
    import contextlib

    if not on:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def record_model(p: SpeedPlan, model, args) -> None:
    cfg = getattr(model, "config", None)
    p.attn_implementation = str(getattr(cfg, "_attn_implementation", "") or "")
    p.optimizer = str(getattr(args, "optim", ""))


# ---------------------------------------------------------------------------------------------------
# The merged half-precision copy used for generation


def _dtype(precision: str, device):
    import torch

    if getattr(device, "type", str(device)) == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def _effective_params(module) -> dict[str, Any]:
    """This module's own parameters as the training model uses them: 4-bit weights dequantized, LoRA deltas
    and trainable-token rows merged in."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import TrainableTokensWrapper

    if isinstance(module, TrainableTokensWrapper):
        layer = module.token_adapter
        base = dict(_effective_params(layer.base_layer))
        base["weight"] = layer.get_merged_weights(layer.active_adapters)
        return base
    if isinstance(module, LoraLayer):
        base = module.get_base_layer()
        params = dict(_effective_params(base))
        weight = params["weight"]
        for adapter in module.active_adapters:
            if adapter in getattr(module, "lora_A", {}) or adapter in getattr(module, "lora_embedding_A", {}):
                weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            if getattr(module, "lora_bias", {}).get(adapter):
                raise NotImplementedError("LoRA bias")
        params["weight"] = weight
        return params
    out = {}
    for name, param in module.named_parameters(recurse=False):
        if type(param).__name__ == "Params4bit":
            import bitsandbytes.functional as bnbf

            out[name] = bnbf.dequantize_4bit(param.data, param.quant_state)
        else:
            out[name] = param.data
    return out


def merged_copy(model, precision: str):
    """A plain transformers model (no peft, no 4-bit) computing what `model` computes, in the run's precision."""
    import copy

    import torch
    from transformers import AutoModelForSeq2SeqLM

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    dtype = _dtype(precision, device)
    config = copy.deepcopy(base.config)
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        new = AutoModelForSeq2SeqLM.from_config(config)
    made: dict[int, dict[str, torch.nn.Parameter]] = {}
    with torch.no_grad():
        for name, mod in new.named_modules(remove_duplicate=False):
            own = [n for n, _ in mod.named_parameters(recurse=False)]
            if not own:
                continue
            src = base.get_submodule(name) if name else base
            key = id(src)
            if key not in made:
                made[key] = {n: torch.nn.Parameter(t.to(device=device, dtype=dtype), requires_grad=False)
                             for n, t in _effective_params(src).items()}
            for n in own:
                if n not in made[key]:
                    raise RuntimeError(f"no source for {name}.{n}")
                setattr(mod, n, made[key][n])  # one Parameter per source module: ties kept only where they are
        for name, buf in list(new.named_buffers()):
            owner, _, leaf = name.rpartition(".")
            src = base.get_submodule(owner) if owner else base
            if hasattr(src, "get_base_layer"):
                src = src.get_base_layer()
            value = src.get_buffer(leaf)
            target = new.get_submodule(owner) if owner else new
            target.register_buffer(leaf, value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype))
    left = [n for n, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"merged copy incomplete: {left[:3]}")
    new.generation_config = copy.deepcopy(model.generation_config)
    new.eval()
    return new


def merge_error(model, copy_, batch) -> float:
    """Relative difference of the two models' teacher-forced logits on `batch` (input_ids, attention_mask, labels)."""
    import torch

    with torch.no_grad():
        a = model(**batch).logits.float()
        b = copy_(**batch).logits.float()
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------------
# Batches: longest first, rows per batch from the memory left


def _row_bytes(config, n_in: int, beams: int, gen_len: int, dtype_bytes: int) -> int:
    """A generous estimate of the GPU memory one dialogue needs during beam search."""
    d = getattr(config, "d_model", 768)
    inner = getattr(config, "num_heads", 0) * getattr(config, "d_kv", 0) or d
    layers = getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None) or 12
    ff = getattr(config, "d_ff", None) or getattr(config, "decoder_ffn_dim", None) or 4 * d
    vocab = getattr(config, "vocab_size", 32000)
    cross = beams * layers * 2 * inner * n_in * dtype_bytes * 2  # cross-attention cache, and its reordered copy
    self_ = beams * layers * 2 * inner * gen_len * dtype_bytes * 2
    logits = beams * vocab * 4 * 4  # fp32 scores and the processors' copies
    encoder = n_in * (ff + 4 * d) * dtype_bytes * 2
    return cross + self_ + logits + encoder


def length_sorted_batches(lengths: list[int], rows_for) -> list[list[int]]:
    """Row indices, longest first, cut into batches of at most `rows_for(longest length in the batch)` rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        n = max(1, rows_for(lengths[order[start]]))
        batches.append(order[start:start + n])
        start += n
    return batches


def _rows_budget(p: SpeedPlan, config, beams: int, gen_len: int, dtype_bytes: int, configured: int, device):
    import torch

    cap_rows = max(configured, p.max_eval_rows)
    if getattr(device, "type", "cpu") != "cuda":
        return lambda n_in: configured * 4, "cpu: 4x the configured batch"
    free, _ = torch.cuda.mem_get_info(device)
    allowed = free
    if p.memory_gib:
        allowed = min(allowed, p.memory_gib * 2**30 - torch.cuda.memory_allocated(device))
    budget = max(0, allowed * 0.7 - 2**30)

    def rows(n_in: int) -> int:
        return int(min(cap_rows, max(1, budget // _row_bytes(config, n_in, beams, gen_len, dtype_bytes))))

    return rows, f"from {budget / 2**30:.1f} GiB free for generation"


# ---------------------------------------------------------------------------------------------------
# No repeated n-grams, on the GPU


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


# ---------------------------------------------------------------------------------------------------
# One evaluation


def evaluate(trainer, p: SpeedPlan, dataset, metric_key_prefix: str = "eval") -> dict[str, float]:
    """What Seq2SeqTrainer.evaluate returns (loss, compute_metrics' scores, runtime), computed faster."""
    started = time.time()
    model = trainer.model
    was_training = model.training
    model.eval()
    rows = [dataset[i] for i in range(len(dataset))]
    eval_loss = dev_loss(trainer, rows, p.chunked_loss)
    gen_model = _generation_model(trainer, p, rows)
    predictions = _generate_in_file_order(trainer, p, gen_model, rows)
    if gen_model is not model:
        del gen_model  # the merged copy: free its memory before scoring
        _empty_cuda_cache(model)
    metrics = _evaluation_metrics(trainer, p, predictions, eval_loss, metric_key_prefix, started, len(rows))
    if was_training:
        model.train()
    return metrics


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


def dev_loss(trainer, rows, chunked: bool = False) -> float:
    """The training model's dev loss per row, regrouped into the plain path's file-order batches (so
    `eval_loss` keeps its plain meaning), computed in length-sorted batches; `chunked`: the per-token
    cross-entropy without a full fp32 copy of the logits (trainables.losses)."""
    import numpy as np
    import torch

    from trainables.losses import token_cross_entropy

    model, collate = trainer.model, trainer.data_collator
    device = _device_of(model)
    configured = trainer.args.per_device_eval_batch_size
    sums, counts = np.zeros(len(rows)), np.zeros(len(rows))
    loss_rows = max(configured, 16) if device.type == "cuda" else configured
    with torch.no_grad():
        for batch_idx in length_sorted_batches(_input_lengths(rows), lambda n: loss_rows):
            batch = collate([rows[i] for i in batch_idx])
            labels = batch["labels"].to(device)
            # Decoder inputs from the collator rather than labels: given labels the model would also compute its
            # own loss, on a full fp32 log-softmax of the batch's logits.
            keys = ("input_ids", "attention_mask", "decoder_input_ids" if "decoder_input_ids" in batch else "labels")
            with trainer.compute_loss_context_manager():
                logits = model(**_on_device(batch, device, keys)).logits
            ce = token_cross_entropy(logits, labels, chunked=chunked).sum(1)
            sums[batch_idx] = ce.double().cpu().numpy()
            counts[batch_idx] = (labels != -100).sum(1).cpu().numpy()
            del logits
    losses = [sums[s:s + configured].sum() / max(1, counts[s:s + configured].sum())
              for s in range(0, len(rows), configured)]
    sizes = [len(range(s, min(s + configured, len(rows)))) for s in range(0, len(rows), configured)]
    return float(np.average(losses, weights=sizes))


def _precision(args) -> str:
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def _generation_model(trainer, p: SpeedPlan, rows):
    """A merged half-precision copy of the model, checked against the training model's logits on the two
    shortest rows; the training model itself where the copy can't be made or differs. Records why in `p`."""
    model = trainer.model
    gen_model, p.eval_merged = model, "no"
    try:
        candidate = merged_copy(model, _precision(trainer.args))
        lengths = _input_lengths(rows)
        shortest = sorted(range(len(rows)), key=lambda i: lengths[i])[:2]
        probe = _on_device(trainer.data_collator([rows[i] for i in shortest]), _device_of(model))
        with trainer.compute_loss_context_manager():
            err = merge_error(model, candidate, probe)
        if err <= MERGE_TOLERANCE:
            gen_model, p.eval_merged = candidate, f"yes (logits within {err:.1e})"
        else:
            p.eval_merged = f"no: merged copy's logits differ by {err:.2f} (relative)"
            del candidate
    except Exception as err:  # noqa: BLE001 - any failure to merge falls back to the training model
        p.eval_merged = f"no: {type(err).__name__}: {str(err)[:120]}"
    if not p.eval_merged.startswith("yes") and p.eval_merged not in p.notes:
        p.notes.append(f"evaluation generated from the training model ({p.eval_merged})")
        log.warning("fast evaluation: %s", p.eval_merged)
    return gen_model


def _generation_kwargs(gen_model, max_len: int, beams: int) -> dict[str, Any]:
    """generate()'s arguments, with the no-repeat n-gram ban as tensor ops (see no_repeat_ngram_processor)."""
    gen_kwargs: dict[str, Any] = {"max_length": max_len, "num_beams": beams}
    ngram = gen_model.generation_config.no_repeat_ngram_size or 0
    if ngram:
        from transformers import LogitsProcessorList

        gen_kwargs.update(no_repeat_ngram_size=0, logits_processor=LogitsProcessorList([no_repeat_ngram_processor(ngram)]))
    return gen_kwargs


def beam_cache(beams: int):
    """A fresh cache for one generate() call: with beam search, one that reorders only the decoder's self-attention
    keys/values. Beam search only picks among the beams of the same dialogue, whose cross-attention keys/values (one
    encoder output, repeated per beam) are equal, so transformers' reorder of them at every decoding step copies equal
    rows: for 48 dialogues x 8 beams x ~500 input tokens about 5 GB of memory traffic per step, which was 58% of an
    evaluation's GPU kernel time in the H100 profile (`aten::gather`/`index_select`). None without beams."""
    if beams <= 1:
        return None
    from transformers.cache_utils import DynamicCache

    return _self_attention_reorder_cache()(DynamicCache(), DynamicCache())


@functools.cache
def _self_attention_reorder_cache():
    """The cache class, defined once (transformers is imported lazily)."""
    from transformers.cache_utils import EncoderDecoderCache

    class SelfAttentionReorderCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx):
            self.self_attention_cache.reorder_cache(beam_idx)

    return SelfAttentionReorderCache


def _generate_in_file_order(trainer, p: SpeedPlan, gen_model, rows):
    """Generated ids for every row: longest rows first, in batches sized from free memory (halved on OOM),
    put back in file order and padded into one array. Records the batch sizes in `p`."""
    import torch

    model, args, collate = trainer.model, trainer.args, trainer.data_collator
    device = _device_of(model)
    configured = args.per_device_eval_batch_size
    beams = args.generation_num_beams or model.generation_config.num_beams or 1
    max_len = args.generation_max_length or model.generation_config.max_length
    dtype_bytes = 4 if _precision(args) == "fp32" or device.type == "cpu" else 2
    rows_for, how = _rows_budget(p, gen_model.config, beams, max_len, dtype_bytes, configured, device)
    gen_kwargs = _generation_kwargs(gen_model, max_len, beams)
    preds: list[Any] = [None] * len(rows)
    pending = length_sorted_batches(_input_lengths(rows), rows_for)
    sizes_used = []
    while pending:
        batch_idx = pending.pop(0)
        inputs = ("input_ids", "attention_mask")
        batch = _on_device(collate([{k: rows[i][k] for k in inputs} for i in batch_idx]), device, inputs)
        try:
            with torch.no_grad():
                out = gen_model.generate(**batch, **gen_kwargs, past_key_values=beam_cache(beams))
        except torch.OutOfMemoryError:
            if len(batch_idx) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch_idx) // 2
            pending[:0] = [batch_idx[:half], batch_idx[half:]]
            p.notes.append(f"generation OOM at {len(batch_idx)} rows: halved") if len(p.notes) < 20 else None
            continue
        sizes_used.append(len(batch_idx))
        out = out.cpu().numpy()
        for j, i in enumerate(batch_idx):
            preds[i] = out[j]
    p.eval_batch_rows = f"{min(sizes_used)}-{max(sizes_used)} rows in {len(sizes_used)} batches ({how})"
    return _padded(preds, trainer.processing_class.pad_token_id)


def _padded(preds, pad: int):
    import numpy as np

    width = max(len(x) for x in preds)
    pred_array = np.full((len(preds), width), pad, dtype=np.int64)
    for i, x in enumerate(preds):
        pred_array[i, :len(x)] = x
    return pred_array


def _evaluation_metrics(trainer, p: SpeedPlan, predictions, eval_loss: float, prefix: str, started: float,
                        n_rows: int) -> dict[str, float]:
    """compute_metrics' scores plus loss, runtime and epoch, named as Seq2SeqTrainer.evaluate names them."""
    from transformers import EvalPrediction

    metrics = trainer.compute_metrics(EvalPrediction(predictions=predictions, label_ids=None))
    metrics = {f"{prefix}_{k}": v for k, v in metrics.items()}
    metrics[f"{prefix}_loss"] = eval_loss
    runtime = time.time() - started
    p.eval_s = round(runtime, 2)
    metrics[f"{prefix}_runtime"] = round(runtime, 4)
    metrics[f"{prefix}_samples_per_second"] = round(n_rows / runtime, 3) if runtime else math.inf
    if trainer.state.epoch is not None:
        metrics["epoch"] = trainer.state.epoch
    return metrics
