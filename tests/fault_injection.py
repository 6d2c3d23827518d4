"""Faults for tests, supplied through the trainable's extension point (run["callbacks"]), never shipped.

`callback_spec(...)` is what a test puts into run["callbacks"] (or passes as `trial_callbacks` to
`tune_main7.main`): the trial imports this module by name and adds an InjectFault to its Trainer callbacks.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def callback_spec(**fault: Any) -> dict[str, Any]:
    return {"factory": "tests.fault_injection:InjectFault", "kwargs": fault}


class InjectFault(TrainerCallback):
    """Kill this process once after an epoch (`kill_after_epoch`, `marker`: the file that says it happened), raise
    a CUDA OOM while the per-device batch is above `oom_above_batch`, or blow the trainable weights up to 1e30 after
    optimizer step `blow_up_after_step` (what a far too high learning rate does: the next loss is inf/NaN).

    After epoch `overrun_after_epoch`, while Ray gives the trial less than a whole GPU, raise what a packed trial
    raises when it overruns its share (trainables.trial.placement's overrun error); after epoch `fail_once_after_epoch`, raise
    another error once (`marker`). `only`: the experiment these faults hit (the run's other trials run clean)."""

    def __init__(self, kill_after_epoch: float | None = None, marker: str | None = None,
                 oom_above_batch: int | None = None, blow_up_after_step: int | None = None,
                 overrun_after_epoch: float | None = None, fail_once_after_epoch: float | None = None,
                 only: str | None = None):
        self.kill_after_epoch, self.marker, self.oom_above_batch = kill_after_epoch, marker, oom_above_batch
        self.blow_up_after_step = blow_up_after_step
        self.overrun_after_epoch, self.fail_once_after_epoch, self.only = overrun_after_epoch, fail_once_after_epoch, only

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.only is not None and args.run_name != self.only:
            return
        epoch = state.epoch or 0
        if self.overrun_after_epoch is not None and epoch > self.overrun_after_epoch:
            from trainables.trial import placement

            granted = placement.granted_gpu_fraction()
            if granted is not None and granted < 1:
                raise placement.overrun_error(args.run_name, {"eff_gpu_fraction": granted, "eff_memory_cap_gib": 1.0},
                                         args.per_device_train_batch_size, args.gradient_accumulation_steps)
        if self.fail_once_after_epoch is not None and epoch > self.fail_once_after_epoch and not Path(self.marker).exists():
            Path(self.marker).write_text(f"failed at step {state.global_step}\n")
            raise RuntimeError("CUDA out of memory (injected by a test; not an overrun of a packed share)")
        if state.global_step == self.blow_up_after_step:
            import torch

            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.fill_(1e30)
        if self.oom_above_batch is not None and args.per_device_train_batch_size > self.oom_above_batch:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory (injected by a test)")
        if self.kill_after_epoch is not None and (state.epoch or 0) > self.kill_after_epoch:
            marker = Path(self.marker)
            if not marker.exists():
                marker.write_text(f"killed at step {state.global_step}\n")
                os.kill(os.getpid(), signal.SIGKILL)
