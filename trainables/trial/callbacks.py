"""The trial's TrainerCallbacks: evaluate at every epoch's end, stop on a NaN loss, report each evaluation to Tune
with its checkpoint, and the extension point through which tests and benchmarks add their own.

Each is an ordinary module-level class built from plain values, so a reader sees what state it keeps.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trainables.layout import TRIAL_META

Report = Callable[[dict[str, Any], "str | None"], None]


class EvalAtEpochEnd(TrainerCallback):
    """With step-based evaluation, still evaluate (and checkpoint) at every epoch's end, unless an evaluation
    already ran at that very step (else the step would be evaluated and reported twice)."""

    def __init__(self):
        self.last_eval_step = -1

    def on_evaluate(self, args, state, control, **kwargs):
        self.last_eval_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step != self.last_eval_step:
            control.should_evaluate = True
            control.should_save = True


def loss_error(name: str, loss: float, where: str, precision: str) -> FloatingPointError:
    return FloatingPointError(f"{name}: training loss is {loss} {where} (precision {precision}); lower "
                              "training.learning_rate, or use bf16/fp32")


class StopOnNaN(TrainerCallback):
    """Fail the trial at the first logged non-finite loss (Tune retries it from its last checkpoint)."""

    def __init__(self, name: str, precision: str):
        self.name, self.precision = name, precision

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise loss_error(self.name, loss, f"at step {state.global_step}", self.precision)


class TrainLossMeter:
    """The training loss since the last report: the trainer adds each micro-batch's loss (already a share of its
    optimizer step's per-token mean), the report reads the mean per optimizer step and resets. Independent of
    `logging_steps`, so a report never lacks it when logging is rarer than evaluation."""

    def __init__(self):
        self.total = None  # a tensor on the training device: no host sync per step
        self.since_step = 0

    def add(self, loss) -> None:
        loss = loss.detach().float()
        self.total = loss if self.total is None else self.total + loss

    def take(self, global_step: int) -> float:
        steps = global_step - self.since_step
        mean = float(self.total.item()) / steps if self.total is not None and steps > 0 else float("nan")
        self.total, self.since_step = None, global_step
        return mean


@dataclass
class TrialRecord:
    """What every report carries besides the evaluation: the trial's effective settings and its clock."""

    name: str
    experiment: dict[str, Any]  # the config as it ran (trial_meta.json, for predict and export)
    model_path: str
    settings: Any  # models.EffectiveSettings
    mode_changes: list[str]
    placement: dict[str, Any]  # eff_* of the GPU share (trainables.trial.placement)
    started: float  # time.time() when this process began the trial
    prior_s: float = 0.0  # seconds trained before this process (from the checkpoint resumed)
    speed: dict[str, Any] = field(default_factory=dict)  # eff_speed_* of the speed plan (recipe.speed_record)
    trainer: dict[str, Any] = field(default_factory=dict)  # what the trainer runs with (recipe.trainer_facts)
    evaluation: dict[str, Any] = field(default_factory=dict)  # how the last reported evaluation ran (its eff_*)

    def elapsed(self) -> float:
        return round(self.prior_s + time.time() - self.started, 2)

    def effective(self) -> dict[str, Any]:
        """The eff_* of what ran: the settings, the speed plan, the trainer, the last evaluation (trial_meta.json's
        "settings")."""
        return {**self.settings.as_metrics(), **self.speed, **self.trainer, **self.evaluation}

    def metrics(self) -> dict[str, Any]:
        return {**self.effective(), "eff_mode_changes": "; ".join(self.mode_changes), **self.placement}


def reset_peak_memory() -> bool:
    """Start this trial's peaks: CPU runs reuse one worker process for trial after trial (driver/grid.py), so the
    process's own peak would carry an earlier trial's. Linux resets the resident-set peak (VmHWM, which ru_maxrss
    reads) to the current size when "5" is written to /proc/self/clear_refs; the libraries already loaded stay
    counted. False where that is not possible (then peak_host_mem_gb is the process's peak since it started)."""
    import gc

    import torch

    gc.collect()  # the previous trial's model and data, before the new baseline
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory() -> dict[str, float]:
    """The peaks since reset_peak_memory (the trial's start): host resident set, GPU memory allocated by torch."""
    import resource

    import torch

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {"peak_gpu_mem_gb": round(gpu, 3), "peak_host_mem_gb": round(host, 3)}


def tune_metrics(eval_metrics: dict[str, float]) -> dict[str, float]:
    """The Trainer's evaluation metrics as reported: rouge1, rouge2, rougeL, competition_score and gen_len
    without the `eval_` prefix, eval_loss with it; runtimes and rates left out."""
    return {(k if k == "eval_loss" else k.removeprefix("eval_")): v for k, v in eval_metrics.items()
            if k.startswith("eval_") and not k.endswith(("_runtime", "per_second"))}


def evaluation_record(eval_metrics: dict[str, Any]) -> dict[str, Any]:
    """How the evaluation ran, where it says (the speed layer's EvalRecord: eff_speed_eval_*)."""
    return {k: v for k, v in eval_metrics.items() if k.startswith("eff_")}


class ReportToTune(TrainerCallback):
    """One report per evaluated step: the evaluation's metrics (kept from on_evaluate) go to Tune with the
    checkpoint saved right after it, plus the mean training loss since the previous report, the clock, peak
    memory, the effective settings (with the evaluation's own record where it gave one: the speed layer's
    EvalRecord, eff_speed_eval_*) and the GPU telemetry of the interval."""

    def __init__(self, record: TrialRecord, report: Report, meter: TrainLossMeter, telemetry=None):
        self.record, self.report, self.meter, self.telemetry = record, report, meter, telemetry
        self.pending: dict[str, float] | None = None  # the last evaluation, until its checkpoint is saved
        self.last_reported_step = -1

    def on_train_begin(self, args, state, control, **kwargs):
        self.meter.since_step = state.global_step  # after a resume: the steps trained from here on

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.pending = dict(metrics or {})

    def on_save(self, args, state, control, **kwargs):
        if self.pending is None or state.global_step == self.last_reported_step:  # no fresh evaluation to report
            return
        evaluation, self.pending, self.last_reported_step = self.pending, None, state.global_step
        self.record.evaluation = evaluation_record(evaluation)
        train_loss = self.meter.take(state.global_step)
        if not math.isfinite(train_loss):
            raise loss_error(self.record.name, train_loss, f"before step {state.global_step}", self.record.settings.precision)
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"  # where the Trainer saved
        elapsed = self.record.elapsed()
        (checkpoint / TRIAL_META).write_text(json.dumps(
            {"experiment": self.record.experiment, "model_path": self.record.model_path,
             "settings": self.record.effective(), "elapsed_s": elapsed}, ensure_ascii=False, indent=1))
        metrics = {
            "epoch": round(state.epoch or 0.0, 4), "step": state.global_step, **tune_metrics(evaluation),
            "train_loss": train_loss, "elapsed_s": elapsed, **peak_memory(), **self.record.metrics(),
            **(self.telemetry.collect(evaluation.get("eval_runtime")) if self.telemetry else {}),  # GPU busy, samples/s
        }
        self.report(metrics, str(checkpoint))
        if self.telemetry:
            self.telemetry.restart()


def extra_callbacks(specs) -> list:
    """The extension point for tests and benchmarks: `run.callbacks`, each a CallbackSpec naming a TrainerCallback
    class or factory ("module:name") and its keyword arguments. The trial imports it by name, so it reaches Ray's
    workers as plain data; whatever it needs from the trial it gets from the Trainer's callback events (the
    model, the tokenizer, the evaluation metrics) or from `trainer_ready(trainer)` when it defines one."""
    out = []
    for spec in specs:
        module, _, name = spec.factory.partition(":")
        out.append(getattr(importlib.import_module(module), name)(**spec.kwargs))
    return out
