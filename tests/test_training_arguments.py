"""The config-to-Seq2SeqTrainingArguments mapping, field by field, for every shipped config (full mode, the
settings a GPU machine would decide), and the effective batch and precision taking the config's place."""

from __future__ import annotations

import math

import pytest

from tests.conftest import ROOT
from trainables.config import apply_mode, load_search_space
from trainables.trial.models import EffectiveSettings
from trainables.trial.recipe import LOCAL_CHECKPOINTS_KEPT, training_arguments

CONFIGS = {c.name: c for c in load_search_space(ROOT / "search_spaces")}


def settings_for(exp, precision="fp32", batch=None, accumulation=None, device="cpu") -> EffectiveSettings:
    return EffectiveSettings(device=device, precision=precision, load_in_4bit=False, lora=True, unsloth=False,
                             unsloth_reason="", model_source="test",
                             train_batch_size=batch or exp.training.per_device_train_batch_size,
                             gradient_accumulation_steps=accumulation or exp.training.gradient_accumulation_steps)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_training_field_reaches_the_trainer(name, tmp_path):
    exp, _ = apply_mode(CONFIGS[name], "full")
    t, g = exp.training, exp.generation
    args = training_arguments(exp, settings_for(exp), str(tmp_path))
    assert args.output_dir == str(tmp_path)
    assert args.num_train_epochs == t.num_train_epochs
    assert args.per_device_train_batch_size == t.per_device_train_batch_size
    assert args.per_device_eval_batch_size == t.per_device_eval_batch_size
    assert args.gradient_accumulation_steps == t.gradient_accumulation_steps
    assert args.learning_rate == t.learning_rate
    assert args.lr_scheduler_type.value == t.lr_scheduler_type
    # the ratio becomes warmup steps of the whole run (transformers 5: warmup_steps takes a float ratio)
    assert args.get_warmup_steps(1000) == math.ceil(t.warmup_ratio * 1000)
    assert args.weight_decay == t.weight_decay
    assert args.max_grad_norm == t.max_grad_norm
    strategy = "steps" if t.eval_steps else "epoch"
    assert args.eval_strategy.value == strategy and args.save_strategy.value == strategy
    if t.eval_steps:
        assert args.eval_steps == t.eval_steps and args.save_steps == t.eval_steps
    assert args.logging_steps == t.logging_steps
    assert args.metric_for_best_model == exp.metric.best_metric
    assert args.greater_is_better is (exp.metric.best_metric != "eval_loss")
    assert args.predict_with_generate is True
    assert args.generation_max_length == g.max_length and args.generation_num_beams == g.num_beams
    assert args.train_sampling_strategy == ("group_by_length" if t.group_by_length else "random")
    assert args.seed == t.seed and args.data_seed == t.seed
    assert args.save_total_limit == LOCAL_CHECKPOINTS_KEPT
    assert args.restore_callback_states_from_checkpoint  # early stopping's patience comes back with a resume
    assert args.report_to == [] and args.run_name == exp.name
    assert args.logging_nan_inf_filter is False  # a NaN step loss must reach StopOnNaN
    assert args.use_cpu is True and args.bf16 is False and args.fp16 is False


def test_the_effective_batch_and_precision_replace_the_configs(tmp_path):
    exp, _ = apply_mode(CONFIGS["04_batch_optimization_rtx3090"], "full")
    assert (exp.training.per_device_train_batch_size, exp.training.gradient_accumulation_steps) == (4, 8)
    args = training_arguments(exp, settings_for(exp, "bf16", batch=16, accumulation=2), str(tmp_path))
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 2)
    assert args.bf16 is True and args.fp16 is False


def test_an_eval_loss_run_stops_early_on_the_lowest_loss(tmp_path):
    from trainables.config import Overlay, apply_overlays

    exp, changes = apply_overlays(CONFIGS["01_baseline_kobart_rtx3090"], [Overlay("metric.best_metric", "eval_loss", "--metric")])
    assert changes == ["metric.best_metric: competition_score -> eval_loss (--metric)"]
    args = training_arguments(exp, settings_for(exp), str(tmp_path))
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
