"""Callbacks that tests add to a trial through its extension point (`run.callbacks`, trainables.trial.callbacks):
what a test needs to see inside a trial, without patching the trainable's module."""

from __future__ import annotations

from transformers import TrainerCallback

PREDICTIONS: list[list[list[int]]] = []  # each evaluation's generated ids, in dev-file order


class CapturePredictions(TrainerCallback):
    """Keeps each evaluation's generated ids (as compute_metrics receives them) in PREDICTIONS."""

    def trainer_ready(self, trainer):
        inner = trainer.compute_metrics

        def compute(pred):
            PREDICTIONS.append(pred.predictions.tolist())
            return inner(pred)

        trainer.compute_metrics = compute


CAPTURE_PREDICTIONS = {"factory": "tests.trial_hooks:CapturePredictions"}


FIRST_STEP: dict = {}  # what CaptureFirstStep saw


class StopAfterFirstStep(Exception):
    """Raised by CaptureFirstStep once the first optimizer step is logged."""


class CaptureFirstStep(TrainerCallback):
    """Dropout off once the trainer is built (the forward is then the same whatever the batch split), then the
    first optimizer step's gradients and logged loss into FIRST_STEP, and the run stopped there."""

    def trainer_ready(self, trainer):
        no_dropout(trainer.model)
        FIRST_STEP["meter"] = trainer.loss_meter

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        FIRST_STEP["grad"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                              if p.requires_grad and p.grad is not None}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in (logs or {}):
            FIRST_STEP["loss"] = logs["loss"]
            raise StopAfterFirstStep


def no_dropout(model) -> None:
    """Dropout off: the nn.Dropout modules, and the rates that attention layers apply functionally (T5's `dropout`,
    BART's `dropout`/`attention_dropout`/...)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
