"""The speed layer's two records, frozen: the SpeedPlan (what the layer does in a trial, decided once by
plan.decide) and an evaluation's EvalRecord (how it ran), each reported under its eff_speed_* names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EvalRecord:
    """How one evaluation ran: which model generated (`eval_merged`: "yes (...)" or why not), the generation
    batches' rows, its seconds, and what happened on the way (a merge refused, batches halved on OOM)."""

    eval_merged: str = ""
    eval_batch_rows: str = ""
    eval_s: float = 0.0
    notes: tuple[str, ...] = ()

    def as_metrics(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval_notes"] = " | ".join(d.pop("notes"))
        return {f"eff_speed_{k}": v for k, v in d.items()}


@dataclass(frozen=True)
class SpeedPlan:
    """What the speed layer does in one trial. `memory_gib`: the cap its allocator runs under (the tighter of
    speed.memory_gib and a packed trial's share), None without one; `batch_candidates`: the micro-batch splits
    to try, largest first (empty: the configured one only)."""

    enabled: bool
    fast_eval: bool
    micro_batch: bool
    chunked_loss: bool
    tf32: bool
    no_cudnn_attention: bool
    memory_gib: float | None
    max_eval_rows: int
    configured_batch: tuple[int, int]
    batch_candidates: tuple[tuple[int, int], ...] = ()
    sdpa_backends: str = "torch default"
    notes: tuple[str, ...] = ()
    sets_allocator_cap: bool = False  # whether memory.apply_memory_cap caps the allocator (a packed trial's is set)

    @property
    def first_micro_batch(self) -> tuple[int, int]:
        """(per-device batch, accumulation) the trial starts training with."""
        return self.batch_candidates[0] if self.batch_candidates else self.configured_batch

    def as_metrics(self) -> dict[str, Any]:
        d = asdict(self)
        del d["sets_allocator_cap"]
        d["notes"] = " | ".join(self.notes)
        d["configured_batch"] = "x".join(map(str, self.configured_batch))
        d["batch_candidates"] = ", ".join(f"{b}x{a}" for b, a in self.batch_candidates)
        # the evaluation's keys, until an evaluation reports its own record (the same keys whether or not it ran)
        return {**{f"eff_speed_{k}": v for k, v in d.items()}, **EvalRecord().as_metrics()}
