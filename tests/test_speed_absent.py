"""The speed layer is removable: with `trainables.trial.speed` made unimportable (an import hook, in this process), a
trial with `speed: off` still trains, evaluates and reports through `run_trial`, the recipe never so much as asks
for the layer, and a trial with speed on fails on the import (the hook really keeps the layer out)."""

from __future__ import annotations

import importlib.abc
import math
import sys

import pytest

from tests.test_models import BART_CONFIG, configs, smoke_exp, standins, tiny_data, trial_config  # noqa: F401

LAYER = "trainables.trial.speed"


class NoSpeedLayer(importlib.abc.MetaPathFinder):
    """Refuses the speed layer's modules and remembers who asked."""

    def __init__(self):
        self.asked: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name == LAYER or name.startswith(LAYER + "."):
            self.asked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (removed for this test)", name=name)
        return None


@pytest.fixture
def without_speed_layer(monkeypatch):
    """The project's modules forgotten (restored afterwards), so that the recipe and everything it imports are
    imported afresh with the layer refused: a module-level import of it anywhere on the trial's path fails."""
    for name in [n for n in sys.modules if n == "trainables" or n.startswith("trainables.")]:
        monkeypatch.delitem(sys.modules, name)
    finder = NoSpeedLayer()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    return finder


def _exp(configs, on: bool):  # noqa: F811
    return smoke_exp(configs, BART_CONFIG, training={"num_train_epochs": 1, "per_device_train_batch_size": 4,
                                                     "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 2,
                                                     "early_stopping_patience": None, "logging_steps": 1},
                     tokenizer={"encoder_max_len": 64, "decoder_max_len": 24},
                     generation={"max_length": 20, "min_length": 1, "num_beams": 2},
                     speed={"enabled": on})


def test_the_hook_makes_the_layer_unimportable(without_speed_layer):
    with pytest.raises(ImportError, match="speed"):
        from trainables.trial import speed  # noqa: F401
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"{LAYER}.plan")


def test_a_trial_with_speed_off_runs_without_the_layer(configs, standins, tiny_data, without_speed_layer):  # noqa: F811
    from trainables.trial.recipe import run_trial

    reports, checkpoints = [], []
    final = run_trial(trial_config(_exp(configs, on=False), standins("bart"), tiny_data),
                      lambda m, c: (reports.append(m), checkpoints.append(c)))
    assert without_speed_layer.asked == []  # the plain path never asked for the layer
    assert not any(n.startswith(LAYER) for n in sys.modules)
    assert reports and all(checkpoints)  # every evaluation reported, with its checkpoint
    last = reports[-1]
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["eval_loss"])
    assert 0.0 <= last["competition_score"] and "rouge1" in last and last["step"] > 0
    assert last["eff_speed_enabled"] is False and final["eff_speed_enabled"] is False
    assert "eff_speed_eval_merged" not in last  # Seq2SeqTrainer's own evaluate ran, not the fast one
    assert last["eff_speed_optimizer"] and last["eff_speed_attn_implementation"]  # the trainer's facts, speed or not


def test_a_trial_with_speed_on_needs_the_layer(configs, standins, tiny_data, without_speed_layer):  # noqa: F811
    from trainables.trial.recipe import decide_trial_settings

    with pytest.raises(ImportError, match="speed"):
        decide_trial_settings(trial_config(_exp(configs, on=True), standins("bart"), tiny_data))
    assert without_speed_layer.asked
