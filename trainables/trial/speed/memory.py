"""The per-process GPU memory cap (speed `memory_gib`), applied once when the trial starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainables.trial.speed.records import SpeedPlan


def apply_memory_cap(p: "SpeedPlan") -> None:
    """Cap this process's CUDA allocations at `p.memory_gib` where the plan says so (`sets_allocator_cap`): a
    too-large micro-batch then raises OOM here and steps down, instead of succeeding on an 80 GB card and failing
    on a 24 GB one. A packed trial's tighter cap was set by its placement (trainables.trial.placement) and is kept."""
    if not p.sets_allocator_cap:
        return
    import torch

    if not torch.cuda.is_available():
        return
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, p.memory_gib * 2**30 / total), 0)
