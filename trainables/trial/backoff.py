"""The recipe's answer to CUDA out of memory: train again at a smaller micro-batch with more accumulation (the same
effective batch), resumed from the last local checkpoint. Part of the plain path: a trial with `speed: off` backs
off too. With speed on, the speed layer's larger micro-batches are stepped down first (speed.next_micro_batch).

Pure apart from the retry loop's torch calls (imported there): the pre-flight plan (trainables.driver.plan) walks
the same halving to predict the batch a trial will run.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.trial.speed import SpeedPlan

log = logging.getLogger(__name__)


def halve_batch(batch_size: int, accumulation: int) -> tuple[int, int]:
    """OOM back-off below the configured batch: half the per-device batch, twice the accumulation, same
    effective batch (odd batches round down)."""
    if batch_size <= 1:
        raise RuntimeError(
            "CUDA out of memory even at per-device batch 1: lower tokenizer.encoder_max_len / decoder_max_len, "
            "turn on training.gradient_checkpointing or qlora.load_in_4bit, or use a card with more memory"
        )
    return batch_size // 2, accumulation * 2


def latest_local_checkpoint(output_dir: str) -> str | None:
    saved = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(saved[-1]) if saved else None


def smaller_batch(settings, speed_plan: "SpeedPlan | None") -> tuple[int, int] | None:
    """The next micro-batch after an OOM: the speed plan's next split, else None (the configured batch or below)."""
    if speed_plan is None:
        return None
    from trainables.trial import speed

    return speed.next_micro_batch(speed_plan, (settings.train_batch_size, settings.gradient_accumulation_steps))


def retry_on_oom(train_once, settings, speed_plan: "SpeedPlan | None", output_dir: str, resume_from: str | None,
                 name: str, packed: dict[str, Any] | None = None):
    """`train_once(settings, resume_from)`; on CUDA OOM, again at a smaller micro-batch with more accumulation (the
    same effective batch), resuming from the last local checkpoint. Returns (its result, the settings that ran).

    `packed`: the eff_* placement of a trial capped at a share of a GPU. Its back-off stops at the configured batch:
    out of memory there, the trial overran the plan's share and raises PackedTrialOverrun, so that Ray retries it
    on a whole GPU (trainables.driver.overrun) at the batch it would have run one at a time."""
    import torch

    from trainables.trial.placement import overrun_error

    while True:
        try:
            return train_once(settings, resume_from), settings
        except torch.OutOfMemoryError:
            pass  # out of the except block first: its traceback holds the failed trainer and model
        smaller = smaller_batch(settings, speed_plan)
        if smaller is None and packed:
            raise overrun_error(name, packed, settings.train_batch_size, settings.gradient_accumulation_steps)
        bs, accum = smaller or halve_batch(settings.train_batch_size, settings.gradient_accumulation_steps)
        cap = f" (memory cap {speed_plan.memory_gib} GiB)" if speed_plan and speed_plan.memory_gib else ""
        note = f"CUDA OOM at per-device batch {settings.train_batch_size}{cap}: retrying with {bs} x {accum} accumulation"
        log.warning("%s: %s", name, note)
        settings = settings.with_batch(bs, accum, note)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        resume_from = latest_local_checkpoint(output_dir) or resume_from
