"""What the benchmarks measure inside a trial, added through the trainable's extension point (`run.callbacks`,
trainables.trial.callbacks): each probe is a TrainerCallback the trial imports by name, and it leaves what it saw in a
module-level record that the benchmark reads after `run_trial` returns (the benchmarks run trials in-process)."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

TIMING: dict[str, Any] = {}  # what BenchTiming saw of the last training run


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class BenchTiming(TrainerCallback):
    """Wall-clock of training (begin, every optimizer step's end, the epoch's end), the training peak memory, and
    the evaluation's metrics. A new instance per Trainer, so a run the OOM back-off restarted is timed afresh."""

    def __init__(self):
        import torch

        TIMING.update(step_ends=[], peak_train=0, attempts=TIMING.get("attempts", 0) + 1)
        for key in ("train_begin", "train_end", "eval_runtime", "eval_metrics"):
            TIMING.pop(key, None)
        TIMING["attempt_started"] = time.perf_counter()
        if torch.cuda.is_available():  # the peak of this attempt, not of one the OOM back-off abandoned
            torch.cuda.reset_peak_memory_stats()

    def on_train_begin(self, args, state, control, **kwargs):
        _sync()
        TIMING["train_begin"] = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        TIMING["step_ends"].append(time.perf_counter())
        TIMING["train_batch"] = args.per_device_train_batch_size  # after any OOM back-off

    def on_epoch_end(self, args, state, control, **kwargs):
        import torch

        _sync()
        TIMING["train_end"] = time.perf_counter()
        if torch.cuda.is_available():
            TIMING["peak_train"] = torch.cuda.max_memory_allocated()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        TIMING["eval_runtime"] = (metrics or {}).get("eval_runtime")
        TIMING["eval_metrics"] = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}


BENCH_TIMING = {"factory": "benchmarks.probes:BenchTiming"}


# side_by_side.py's project side: its Probe (forced generation lengths, token and loss counts) and what it
# captures, set here before run_trial; a TrialProbe reads them when the trial builds it.
ACTIVE: dict[str, Any] = {}


class TrialProbe(TrainerCallback):
    """Watches the trial's own Trainer for side_by_side.py: every training micro-batch's tokens and loss (a forward
    hook, and the compute_loss_func wrapped), each optimizer step's end, the decoded dev predictions, the
    evaluation's wall-clock (training numbers captured just before the first one), and optional profiles."""

    def __init__(self):
        self.probe, self.captured = ACTIVE["probe"], ACTIVE["captured"]
        self.probe.reset()  # a run the OOM back-off restarted is measured afresh
        self.step_timing = self.probe.timing_callback()
        self.evaluated = False

    def trainer_ready(self, trainer):
        from trainables.trial.families.seq2seq.framing import probe_framing

        ACTIVE.setdefault("hooks", []).append(self.probe.watch(trainer.model))
        self.captured["params"] = ACTIVE["param_split"](trainer.model)
        trainer.compute_loss_func = self.probe.watch_loss(trainer.compute_loss_func)
        framing = probe_framing(trainer.processing_class, ACTIVE["model_path"])  # as the trial frames and decodes
        self._capture_predictions(trainer, framing)
        self._time_evaluations(trainer)
        if ACTIVE.get("train_profiler"):
            trainer.add_callback(ACTIVE["train_profiler"]())

    def on_step_end(self, args, state, control, **kwargs):
        self.step_timing.on_step_end(args, state, control, **kwargs)

    def _capture_predictions(self, trainer, framing) -> None:
        inner, tokenizer, captured = trainer.compute_metrics, trainer.processing_class, self.captured

        def compute(pred):
            import numpy as np

            ids = np.where(pred.predictions < 0, framing.pad_id, pred.predictions)
            captured["predictions"] = framing.decode(tokenizer, ids)  # as the trial decodes them for ROUGE
            return inner(pred)

        trainer.compute_metrics = compute

    def _time_evaluations(self, trainer) -> None:
        import contextlib

        import torch

        evaluate, captured = trainer.evaluate, self.captured

        def timed(*args, **kwargs):
            first = not self.evaluated
            if first:  # training has stopped for its first evaluation: its numbers are complete
                self.evaluated = True
                captured["train"] = ACTIVE["training_numbers"](self.probe, trainer.args.gradient_accumulation_steps)
                if torch.cuda.is_available():
                    captured["peak_gpu_train_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            profile = ACTIVE.get("eval_profiler") if first else None
            started = time.perf_counter()
            with profile() if profile else contextlib.nullcontext():
                result = evaluate(*args, **kwargs)
            captured["eval_s"] = round(time.perf_counter() - started, 3)
            return result

        trainer.evaluate = timed


TRIAL_PROBE = {"factory": "benchmarks.probes:TrialProbe"}


LOSSES: list[float] = []  # StepLosses: the logged training loss of every optimizer step of the last run


class StepLosses(TrainerCallback):
    """The Trainer's logged loss at each logging step (logging_steps=1: every optimizer step's per-token mean)."""

    def __init__(self):
        LOSSES.clear()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            LOSSES.append(float(logs["loss"]))


STEP_LOSSES = {"factory": "benchmarks.probes:StepLosses"}
