"""Inside a trial: the GPU share the plan (trainables.driver.plan) gave it, as a memory cap, and what is recorded.

Where several trials share one GPU, each caps its own CUDA allocator at its share (`apply_memory_cap`, through
`torch.cuda.set_per_process_memory_fraction`), so one trial can't starve another; past the cap a trial gets the
ordinary CUDA OOM, and its larger-micro-batch back-off steps down to the configured batch as on a small card. Out of
memory at the configured batch, the trial overran its share: it raises PackedTrialOverrun, and the driver
(trainables.driver.overrun) has Ray retry it on a whole GPU from its last checkpoint; the retry reads the fraction Ray
gave it (`granted_gpu_fraction`) and runs uncapped.

Also here, because the plan and the trial must decide it the same way: whether the fast evaluation's merged
half-precision copy fits beside the training model (`merged_copy_fits`). Nothing here imports torch at module level.
"""

from __future__ import annotations

from typing import Any

from trainables.config import Placement
from trainables.errors import UserError

GIB = 2**30
CONTEXT_GIB = 0.6  # a CUDA context and cuBLAS workspace per process, outside the allocator's cap


class PackedTrialOverrun(UserError):
    """A packed trial ran out of GPU memory under its share's cap at its configured batch: the plan underestimated
    it. Raised inside the trial; the driver's callback (trainables.driver.overrun) finds this class's name in the trial's
    error and has Ray retry the trial on a whole GPU. Without retries left (--max-failures 0) use --no-pack."""


def cap_for_fraction(fraction: float, card_memory_gib: float) -> float | None:
    """The allocator cap of a trial holding `fraction` of a card: its share less its CUDA context; None (uncapped)
    for a whole card."""
    return None if fraction >= 1.0 else round(fraction * card_memory_gib - CONTEXT_GIB, 2)


def merged_copy_fits(resident_gib: float, copy_gib: float, generation_gib: float, cap_gib: float | None) -> bool:
    """Whether the fast evaluation may build its merged half-precision copy: the training model (weights, LoRA,
    optimizer state: `resident_gib`), the copy (parameters x 2 bytes) and one generation batch must fit under the
    trial's cap together; else generation runs from the training model. No cap (None): it fits. The plan calls this
    with its predictions; the speed layer may call it with what the allocator holds (a 10.7B model's bf16 copy is
    ~20 GiB: it does not fit a 24 GB card beside its 4-bit training model)."""
    return cap_gib is None or resident_gib + copy_gib + generation_gib <= cap_gib


def granted_gpu_fraction() -> float | None:
    """The GPU fraction Ray gave this trial as it runs (after any re-placement: trainables.driver.overrun), or None
    outside a Tune trial (a benchmark or test calling run_trial directly) and for a CPU trial."""
    import sys
    import warnings

    ray = sys.modules.get("ray")  # a Tune trial has imported Ray; anything else needs no Ray import here
    if ray is None or not ray.is_initialized():
        return None
    from ray import tune

    with warnings.catch_warnings():  # outside a trial Tune warns once and returns None
        warnings.simplefilter("ignore")
        try:
            resources = tune.get_context().get_trial_resources()
        except Exception:  # noqa: BLE001 - no Tune session here
            return None
    gpu = float(resources.required_resources.get("GPU", 0.0)) if resources is not None else 0.0
    return gpu or None


def apply_memory_cap(placed: Placement | None, granted: float | None = None) -> dict[str, Any]:
    """Cap this process's CUDA allocator at the trial's share; return the eff_* record of the placement.

    `granted`: the GPU fraction Ray really gave the trial (granted_gpu_fraction; None: the plan's). Where Ray gave
    more than the plan (a retry after an overrun), the cap follows Ray's fraction: none for a whole GPU.
    Past the cap an allocation raises the ordinary CUDA OOM, so the batch back-off works as on a smaller card."""
    eff: dict[str, Any] = {"eff_gpu_fraction": 1.0, "eff_memory_cap_gib": None, "eff_packed": False,
                           "eff_replaced": False}
    if not placed:
        return eff
    fraction = placed.gpu if granted is None else round(granted, 4)
    eff.update(eff_gpu_fraction=fraction, eff_predicted_peak_gib=placed.predicted_peak_gib,
               eff_predicted_trial_s=placed.predicted_trial_s, eff_replaced=fraction > placed.gpu + 1e-9)
    import torch

    if not torch.cuda.is_available():
        return eff
    total = torch.cuda.get_device_properties(0).total_memory
    cap = placed.memory_cap_gib if abs(fraction - placed.gpu) < 1e-9 else cap_for_fraction(fraction, total / GIB)
    if not cap:
        return eff
    share = min(1.0, cap * GIB / total)
    torch.cuda.set_per_process_memory_fraction(share, 0)
    eff.update(eff_memory_cap_gib=round(share * total / GIB, 2), eff_packed=fraction < 1.0)
    return eff


def replacement_note(placed: Placement, eff: dict[str, Any]) -> str:
    """The eff_notes line of a trial that Ray re-placed after it overran its packed share."""
    return (f"re-placed after overrunning its packed share: planned {placed.gpu:g} of the GPU (cap "
            f"{placed.memory_cap_gib} GiB), ran on {eff['eff_gpu_fraction']:g} (cap {eff['eff_memory_cap_gib']} GiB)")


def overrun_error(name: str, eff: dict[str, Any], batch: int, accumulation: int) -> PackedTrialOverrun:
    """What a packed trial raises when it runs out of memory under its cap at its configured batch."""
    return PackedTrialOverrun(
        f"{name}: CUDA out of memory at per-device batch {batch} x {accumulation} accumulation under its packed "
        f"share's cap of {eff.get('eff_memory_cap_gib')} GiB ({eff.get('eff_gpu_fraction')} of the GPU, predicted peak "
        f"{eff.get('eff_predicted_peak_gib')} GiB): the trial overran its planned share and will be retried on the "
        "whole GPU from its last checkpoint (with --max-failures 0 it is not: rerun with --no-pack)")
