"""The speed decisions of one trial, made once (`decide`) into a frozen SpeedPlan and reported as `eff_speed_*`.

Nothing here imports torch: the plan is a function of the config, whether the trial has a CUDA GPU, its
configured micro-batch and the memory cap of a trial packed onto a shared card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainables.trial.speed.batches import batch_candidates
from trainables.trial.speed.records import SpeedPlan

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

NO_CUDNN = "flash, efficient, math (no cuDNN)"


def decide(exp: "ExperimentConfig", configured_batch: tuple[int, int], cuda: bool,
           packed_cap_gib: float | None = None) -> SpeedPlan:
    """The speed plan of a trial whose config turns speed on (`speed: off` never calls the layer). `packed_cap_gib`:
    the cap of a trial packed onto a shared card (trainables.trial.placement.apply_memory_cap), kept where tighter."""
    o = exp.speed
    notes: list[str] = []
    candidates: tuple[tuple[int, int], ...] = ()
    if o.micro_batch:
        candidates = tuple(batch_candidates(*configured_batch)) if cuda else (configured_batch,)
        if not cuda:
            notes.append("no CUDA GPU: configured micro-batch kept")
    cap = o.memory_gib if cuda else None
    # The cap makes a too-large micro-batch raise OOM here (and step down) rather than succeed on an 80 GB card
    # and fail on a 24 GB one; without the larger micro-batch it only sizes the generation batches.
    sets_cap = bool(cap) and o.micro_batch
    if cap and packed_cap_gib and packed_cap_gib <= cap:
        notes.append(f"kept the packed trial's GPU memory cap ({packed_cap_gib:.1f} GiB)")
        cap, sets_cap = packed_cap_gib, False  # already set by the placement
    no_cudnn = o.no_cudnn_attention and cuda
    return SpeedPlan(enabled=True, fast_eval=o.fast_eval, micro_batch=o.micro_batch, chunked_loss=o.chunked_loss,
                     tf32=o.tf32 and cuda, no_cudnn_attention=no_cudnn, memory_gib=cap, max_eval_rows=o.max_eval_rows,
                     configured_batch=tuple(configured_batch), batch_candidates=candidates,
                     sdpa_backends=NO_CUDNN if no_cudnn else "torch default", notes=tuple(notes),
                     sets_allocator_cap=sets_cap)


def training_arguments(p: SpeedPlan) -> dict[str, Any]:
    """What the plan adds to the TrainingArguments."""
    return {"tf32": True} if p.tf32 else {}
