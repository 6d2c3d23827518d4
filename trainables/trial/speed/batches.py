"""The larger micro-batch (speed `micro_batch`): the splits of the effective batch a trial tries, largest first, and
the step down after an OOM. Pure: the pre-flight plan (trainables.driver.plan) walks the same list.

Below the configured micro-batch the recipe's own back-off (trainables.trial.backoff.halve_batch) takes over; it
is not part of this layer, since a trial with `speed: off` backs off too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainables.trial.speed.records import SpeedPlan


def batch_candidates(batch: int, accumulation: int) -> list[tuple[int, int]]:
    """The micro-batch splits a trial tries, largest first: every m x (effective / m) with m >= the configured
    micro-batch at the same effective batch (9 x 2 as well as 18 x 1 and 6 x 3: the recipe's token-mean loss is
    exact for any split); an OOM (under the memory cap) steps down this list to the configured batch."""
    effective = batch * accumulation
    return [(m, effective // m) for m in range(effective, batch - 1, -1) if effective % m == 0]


def next_micro_batch(p: "SpeedPlan", current: tuple[int, int]) -> tuple[int, int] | None:
    """After an OOM at `current`: the next smaller split in the plan, or None (the recipe's halving takes over)."""
    smaller = [c for c in p.batch_candidates if c[0] < current[0]]
    return smaller[0] if smaller else None
