"""Packing: which planned trials share a GPU (fractions, memory caps), in which order, and the grid's wall-clock.

Where several trials fit one GPU with headroom, each asks Ray for a fraction of a GPU (`gpu_fraction`, read back by
`trial_resources`) and caps its own allocator at its share (trainables.trial.placement). Longest trials go first.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

from trainables.trial.placement import CONTEXT_GIB, cap_for_fraction

HEADROOM = 1.15  # a packed trial's share is its predicted peak (allocated) plus 15%
MIN_PACK_FRACTION_STEP = 0.01
# Each other trial on the same GPU slows a trial by this much: four real-size configs packed on one H100 ran
# their steps 1.2-2.2x and their generation 1.7-2.5x slower than alone (BENCHMARKS.md), ~0.35 per co-runner.
PACKED_SLOWDOWN = 0.35


class Packable(Protocol):
    """What packing reads and sets on a planned trial (trainables.driver.plan.TrialPlan)."""

    name: str
    peak_gib: float
    trial_s: float
    batch: tuple[int, int]
    configured_batch: tuple[int, int]
    gpu_fraction: float
    memory_cap_gib: float | None


def share_gib(peak_gib: float) -> float:
    """GPU memory a packed trial is given: its predicted peak plus headroom, plus its CUDA context."""
    return peak_gib * HEADROOM + CONTEXT_GIB


def pack(trials: Sequence[Packable], card_memory_gib: float, enabled: bool = True, gpus: int = 1) -> bool:
    """Set each trial's GPU fraction and memory cap; return whether any two trials can share a GPU.

    A trial's fraction is its share of the card, rounded up to 0.01; Ray places trials on one GPU while their
    fractions sum to at most 1. Packing is used only where at least two trials fit one card together; else
    (or disabled, or a trial that doesn't fit a card alone) a trial takes the whole card, uncapped."""
    fractions = {}
    # Ray fills GPU 0 first (first fit): on several GPUs no GPU takes more than its part of the trials
    floor = 1 / math.ceil(len(trials) / gpus) if gpus > 1 and trials else 0.0
    for t in trials:
        # a trial predicted below its configured micro-batch gets there by the back-off a packed trial doesn't have
        shareable = card_memory_gib and t.batch[0] >= t.configured_batch[0]
        need = max(floor, share_gib(t.peak_gib) / card_memory_gib) if shareable else 2.0
        fractions[t.name] = math.ceil(need / MIN_PACK_FRACTION_STEP - 1e-9) * MIN_PACK_FRACTION_STEP
    sizes = sorted(v for v in fractions.values() if v <= 1.0)
    packable = enabled and len(sizes) >= 2 and sizes[0] + sizes[1] <= 1.0
    for t in trials:
        f = fractions[t.name]
        if packable and f <= 1.0 - sizes[0] + 1e-9:  # shares the card with at least the smallest other trial
            t.gpu_fraction = round(f, 2)
            t.memory_cap_gib = cap_for_fraction(t.gpu_fraction, card_memory_gib)
        else:
            t.gpu_fraction, t.memory_cap_gib = 1.0, None
    return packable


def longest_first(trials: list) -> list:
    return sorted(trials, key=lambda t: -t.trial_s)


def makespan(trials: Sequence[Packable], gpus: int, slowdown: float = PACKED_SLOWDOWN, packed: bool = True) -> float:
    """Wall-clock of the grid. Trials start in the given order (longest first) whenever their fraction fits a
    GPU (Ray starts any pending trial that fits); while k trials share a GPU each progresses at 1/(1 + slowdown
    x (k - 1)) of its speed alone."""
    gpus = max(1, gpus)
    free = [1.0] * gpus
    running: list[list[Any]] = []  # [remaining seconds of work alone, gpu, fraction]
    pending = list(trials)
    now = 0.0
    while pending or running:
        for t in list(pending):
            f = t.gpu_fraction if packed else 1.0
            gpu = next((g for g in range(gpus) if free[g] + 1e-9 >= f), None)
            if gpu is not None:
                free[gpu] -= f
                running.append([t.trial_s, gpu, f])
                pending.remove(t)
        if not running:
            break  # a trial wider than a GPU: can't happen with fractions <= 1
        share = {g: sum(1 for r in running if r[1] == g) for g in range(gpus)}
        rate = [1 / (1 + slowdown * (share[r[1]] - 1)) for r in running]
        dt = min(r[0] / v for r, v in zip(running, rate))
        now += dt
        for r, v in zip(running, rate):
            r[0] -= dt * v
        for r in [r for r in running if r[0] <= 1e-6]:
            free[r[1]] += r[2]
            running.remove(r)
    return now


def trial_resources(config: dict[str, Any], use_gpu: bool = True) -> dict[str, float]:
    """Ray's request for one trial, read from Ray's plain trial config (run.placement, by experiment name): its
    planned GPU fraction, else one whole GPU (a CPU trial: one CPU)."""
    if not use_gpu:
        return {"cpu": 1}
    placed = (config.get("run", {}).get("placement") or {}).get(config.get("experiment", {}).get("name")) or {}
    return {"cpu": 1, "gpu": float(placed.get("gpu") or 1)}
