"""The Tune trainable: one experiment, fine-tuned with its model family's Hugging Face Trainer.

Ray runs trainables.trial.entry.train_summarizer, which validates the trial's config back into a `TrialConfig`
(importing Unsloth first where the trial will use it) and calls `train_in_ray` here, which calls `run_trial`, a plain function of that config, a `report` callable and an optional checkpoint folder to
resume from (tests run it without Ray). `run_trial` is the recipe, top to bottom:

    decide the settings -> data -> model -> trainer -> train (retried at a smaller micro-batch on CUDA OOM)

Everything that differs between kinds of model (tokenizer, framing, loading, collator, Trainer class, generation)
comes from the config's family, `family_of(model.architecture)` (trainables.trial.families).

The speed layer (trainables.trial.speed) is called through its hooks only where the config turns speed on; with
`speed: off` this module never imports it and runs the family Trainer's plain path, keeping only the recipe's
correctness fixes (the token-mean loss, dev batches in file order: the speed package's docstring says why they
are not speed-ups).

At every evaluation (each epoch's end, and every `eval_steps` steps where the config sets it) dev ROUGE is
computed with the config's generation settings, and the metrics are reported together with a checkpoint
(model/adapter in safetensors, optimizer, scheduler, RNG and trainer state), so that a restarted trial
continues where it stopped, with the same data order. This module never reads YAML.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import EarlyStoppingCallback, PrinterCallback

from trainables import compat
from trainables.trial.backoff import retry_on_oom
from trainables.trial.callbacks import (
    EvalAtEpochEnd, Report, ReportToTune, StopOnNaN, TrainLossMeter, TrialRecord, extra_callbacks, reset_peak_memory,
)
from trainables.config import ConfigError, ExperimentConfig, TrialConfig, mode_of, static_problems
from trainables.trial.families import LoadRecord, family_of
from trainables.layout import TRIAL_META
from trainables.trial.models import EffectiveSettings, Environment, count_parameters, decide_settings
from trainables.trial.telemetry import CountTrainingBatches, Telemetry

if TYPE_CHECKING:
    from trainables.trial.speed import SpeedPlan

log = logging.getLogger("trainables.trial.recipe")

# Local checkpoints the Trainer keeps in the trial's scratch folder: the latest, for the OOM retry to resume
# from, and the one before. Tune keeps the reported ones (--keep-checkpoints), so more would only fill the disk.
LOCAL_CHECKPOINTS_KEPT = 2


# ---------------------------------------------------------------------------------------------------
# The recipe


def run_trial(trial: TrialConfig, report: Report, resume_from: str | None = None) -> dict[str, Any]:
    """Train one experiment; `report(metrics, checkpoint_dir)` is called after every evaluation."""
    started = time.time()
    exp = trial.experiment
    settings, speed_plan, placement = decide_trial_settings(trial)
    data = TrialData.load(trial)
    record = TrialRecord(name=exp.name, experiment=exp.model_dump(), model_path=trial.model.model_path,
                         settings=settings, mode_changes=trial.mode_changes, placement=placement,
                         started=started, prior_s=prior_train_time(resume_from), speed=speed_record(speed_plan))
    output_dir = tempfile.mkdtemp(prefix=f"hf-{exp.name}-")
    telemetry = Telemetry(gpu=settings.device == "cuda")

    def train_once(settings: EffectiveSettings, resume: str | None):
        trainer = build_trainer(trial, settings, speed_plan, data, output_dir, record, report, telemetry)
        try:
            return trainer.train(resume_from_checkpoint=resume)
        finally:
            del trainer

    try:
        with attention_context(speed_plan):
            result, _ = retry_on_oom(train_once, settings, speed_plan, output_dir, resume_from, exp.name,
                                     packed=placement if placement["eff_packed"] else None)
        # record.settings: what the last attempt ran (its batch), with what its framing and loading decided
        return {"train_runtime": result.metrics.get("train_runtime"), **record.effective(), **placement}
    finally:
        telemetry.stop()
        shutil.rmtree(output_dir, ignore_errors=True)


def decide_trial_settings(trial: TrialConfig) -> tuple[EffectiveSettings, "SpeedPlan | None", dict[str, Any]]:
    """What this machine will really run (precision, 4-bit, batch), the GPU share, and the speed plan (None with
    `speed: off`: the speed layer is not imported)."""
    import torch

    from trainables.trial.placement import apply_memory_cap, granted_gpu_fraction, replacement_note

    exp, run = trial.experiment, trial.run
    if run.torch_threads:
        torch.set_num_threads(run.torch_threads)
    env = Environment(**run.environment) if run.environment else Environment.probe()  # tests: a fake machine
    settings = decide_settings(exp, env, trial.model.model_source)
    # a packed trial caps its allocator at its share: the one Ray gave it (a whole GPU after an overrun)
    placement = apply_memory_cap(trial.placement, granted_gpu_fraction())
    if placement["eff_replaced"]:
        settings = replace(settings, notes=(*settings.notes, replacement_note(trial.placement, placement)))
    speed_plan = None
    if exp.speed.enabled:
        from trainables.trial import speed

        speed_plan = speed.decide(exp, (settings.train_batch_size, settings.gradient_accumulation_steps),
                                  cuda=settings.device == "cuda", packed_cap_gib=placement.get("eff_memory_cap_gib"))
        bs, accum = speed_plan.first_micro_batch  # may be larger than configured, at the same effective batch
        settings = replace(settings, train_batch_size=bs, gradient_accumulation_steps=accum)
        speed.apply_memory_cap(speed_plan)
    for note in settings.notes:
        log.warning("%s: %s", exp.name, note)
    return settings, speed_plan, placement


def speed_record(speed_plan: "SpeedPlan | None") -> dict[str, Any]:
    """The plan's eff_speed_* for every report; with `speed: off` only eff_speed_enabled (the layer never ran)."""
    return speed_plan.as_metrics() if speed_plan else {"eff_speed_enabled": False}


def attention_context(speed_plan: "SpeedPlan | None"):
    """The context training and evaluation run in: the speed layer's attention kernels, or torch's own choice."""
    import contextlib

    if speed_plan is None:
        return contextlib.nullcontext()
    from trainables.trial import speed

    return speed.attention_backends(speed_plan)


@dataclass
class TrialData:
    """The tokenizer, its BOS/EOS framing, both splits tokenized, and the dev summaries ROUGE compares with."""

    tokenizer: Any
    framing: Any  # the family's Framing (trainables.trial.families.Framing)
    train: Any
    dev: Any
    dev_summaries: list[str]

    @classmethod
    def load(cls, trial: TrialConfig) -> "TrialData":
        from trainables.data import read_split

        exp = trial.experiment
        family = family_of(exp.model.architecture)
        tokenizer = family.load_tokenizer(trial.model.model_path, exp)
        framing = family.framing(tokenizer, trial.model.model_path, exp)  # BOS/EOS as this tokenizer and model need
        frames = {split: read_split(Path(trial.run.data_dir), split, warn=False).frame  # the driver warned
                  for split in ("train", "dev")}
        train, dev = (family.tokenize(frames[split], tokenizer, exp, framing) for split in ("train", "dev"))
        return cls(tokenizer, framing, train, dev, frames["dev"]["summary"].tolist())


def settings_as_run(settings: EffectiveSettings, framing, loaded: LoadRecord) -> EffectiveSettings:
    """The decided settings with what the framing and the model's loading decided (eff_framing, eff_token_rows,
    their notes): the one place they are combined, once per attempt (an OOM retry loads the model again)."""
    return replace(settings, framing=framing.describe(), token_rows=loaded.token_rows,
                   notes=(*settings.notes, *framing.notes, *loaded.notes))


def build_trainer(trial: TrialConfig, settings: EffectiveSettings, speed_plan, data: TrialData, output_dir: str,
                  record: TrialRecord, report: Report, telemetry: Telemetry | None = None):
    """The model (seeded, framed, with the generation settings) and its trainer with the trial's callbacks;
    `record.settings` becomes what this attempt runs (settings_as_run)."""
    from transformers import set_seed

    exp = trial.experiment
    family = family_of(exp.model.architecture)
    # Seed before the LoRA/QLoRA wrapping: the adapters' initial weights come from the global RNG, and the
    # Trainer only seeds it later. Unseeded, two runs of one config (or a run and its retry) differ.
    set_seed(exp.training.seed)
    model, loaded = family.load_model(exp, trial.model.model_path, data.tokenizer, settings)
    record.settings = settings_as_run(settings, data.framing, loaded)
    data.framing.apply_to(model)  # decoder start, EOS and forced EOS for the Trainer's generate()
    model.generation_config.update(**family.generation_kwargs(exp.generation))  # what the Trainer's generate() falls back on
    trainable, total = count_parameters(model)
    log.info("%s: %d of %d parameters trainable (%s)", exp.name, trainable, total, settings.model_source)
    meter = TrainLossMeter()
    extras = extra_callbacks(trial.run.callbacks)
    callbacks = [EvalAtEpochEnd(), StopOnNaN(exp.name, settings.precision), ReportToTune(record, report, meter, telemetry),
                 *([telemetry.callback()] if telemetry else []), *extras]
    if exp.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=exp.training.early_stopping_patience))
    trainer = summarization_trainer(family.trainer_class())(
        model=model, args=training_arguments(exp, settings, output_dir, speed_plan), train_dataset=data.train,
        eval_dataset=data.dev, processing_class=data.tokenizer, data_collator=family.collator(data.tokenizer, model),
        compute_metrics=rouge_metrics(exp, data.tokenizer, data.dev_summaries, data.framing),
        # Unsloth computes the loss inside its model (no logits materialised: its memory saving), normalised by
        # the accumulated batch's label tokens that the Trainer passes (num_items_in_batch), as token_mean_loss is
        compute_loss_func=None if settings.unsloth else loss_function(speed_plan, family), callbacks=callbacks,
        loss_meter=meter, telemetry=telemetry, fast_evaluate=fast_evaluation(speed_plan, family),
        model_computes_loss=settings.unsloth,
    )
    record.trainer = trainer_facts(model, trainer.args)
    for extra in extras:  # the extension point's second half: a callback may wrap what the trainer computes
        if hasattr(extra, "trainer_ready"):
            extra.trainer_ready(trainer)
    return trainer


# ---------------------------------------------------------------------------------------------------
# The pieces


def prior_train_time(resume_from: str | None) -> float:
    """Seconds the trial had trained before this process, from the checkpoint it resumes from."""
    meta = Path(resume_from) / TRIAL_META if resume_from else None
    if meta is None or not meta.is_file():
        return 0.0
    try:
        return float(json.loads(meta.read_text(encoding="utf-8")).get("elapsed_s", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0


def training_arguments(exp: ExperimentConfig, settings: EffectiveSettings, output_dir: str,
                       speed_plan: "SpeedPlan | None" = None):
    """The config as the family's training arguments (its training_arguments_class), field by field
    (tests/test_training_arguments.py checks each). The batch and precision are the effective ones (`settings`),
    which may differ from the config's; the speed plan may add to them (tf32)."""
    t, g = exp.training, exp.generation
    strategy = "steps" if t.eval_steps else "epoch"  # epoch ends are also evaluated with steps (EvalAtEpochEnd)
    return family_of(exp.model.architecture).training_arguments_class()(
        output_dir=output_dir,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=settings.train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5 has no warmup_ratio: a float in [0, 1) here is that ratio
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        eval_strategy=strategy,
        save_strategy=strategy,  # every evaluation is saved, so each report has its checkpoint
        eval_steps=t.eval_steps,
        save_steps=t.eval_steps,
        save_total_limit=LOCAL_CHECKPOINTS_KEPT,
        # a resumed trial stops early where the uninterrupted one does: early stopping's patience counter is saved
        # in each checkpoint, and the Trainer only reads it back with this (off by default)
        restore_callback_states_from_checkpoint=True,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # the default swaps a NaN/inf step loss for the mean, hiding it from StopOnNaN
        metric_for_best_model=exp.metric.best_metric,  # early stopping's metric: the run's one metric
        greater_is_better=mode_of(exp.metric.best_metric) == "max",
        predict_with_generate=True,
        generation_max_length=g.max_length,
        generation_num_beams=g.num_beams,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],  # W&B, when asked, logs through Ray Tune's WandbLoggerCallback (trainables.results.summaries)
        run_name=exp.name,
        use_cpu=settings.device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,  # Tune's trial table shows progress; per-step bars from parallel trials interleave
        log_level="error",  # the Trainer resets transformers' verbosity to this: its advisory warnings are noise here
        **(speed_extra_arguments(speed_plan) if speed_plan else {}),
    )


def rouge_metrics(exp: ExperimentConfig, tokenizer, references: list[str], framing):
    """compute_metrics: ROUGE of the generated dev summaries against the dev set's own summary text.

    Not against the decoded labels: those went through the tokenizer, so they are cut at decoder_max_len and
    carry its spacing and unknown-token losses, which would make every score differ from the competition's."""
    import numpy as np

    from trainables.metrics import KoreanRouge, clean_summary

    scorer = KoreanRouge(exp.metric.tokenization)  # the analyzer loads once per trial
    refs = [clean_summary(r) for r in references]

    def compute(eval_pred):
        preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        decoded = framing.decode(tokenizer, np.where(preds < 0, framing.pad_id, preds))  # cut at EOS, specials stripped
        if len(decoded) != len(refs):
            raise RuntimeError(f"{len(decoded)} predictions for {len(refs)} dev summaries: evaluation order is broken")
        scores = scorer.score(decoded, refs)
        scores["gen_len"] = float(np.mean([len(p.split()) for p in decoded])) if decoded else 0.0
        return scores

    return compute


def speed_extra_arguments(speed_plan: "SpeedPlan") -> dict[str, Any]:
    from trainables.trial import speed

    return speed.training_arguments(speed_plan)


def trainer_facts(model, args) -> dict[str, Any]:
    """What the trainer runs with, speed on or off, under the names results have always shown them: the
    attention implementation transformers chose and the optimizer."""
    return {"eff_speed_attn_implementation": compat.attention_implementation(model.config),
            "eff_speed_optimizer": str(args.optim)}


def fast_evaluation(speed_plan: "SpeedPlan | None", family):
    """The speed layer's evaluation, for the trainer to call instead of its own where the plan turns fast_eval
    on (with `family`'s generation hooks); else None (the family's Trainer evaluates)."""
    if not (speed_plan and speed_plan.fast_eval):
        return None
    from trainables.trial import speed

    return partial(speed.evaluate, p=speed_plan, family=family)


def loss_function(speed_plan: "SpeedPlan | None", family=None):
    """The Trainer's compute_loss_func: token_mean_loss on the logits and labels as `family` (a ModelFamily)
    aligns them, with the speed layer's cross-entropy where the plan chunks it (speed.chunked_loss), else the
    plain one."""
    cross_entropy = None
    if speed_plan is not None:
        from trainables.trial import speed

        cross_entropy = speed.trainer_cross_entropy(speed_plan)
    return partial(token_mean_loss, cross_entropy=cross_entropy or plain_cross_entropy,
                             align=family.token_logits_and_labels if family else None)


def plain_cross_entropy(logits, labels):
    """Summed fp32 cross-entropy of `logits` (..., V) against `labels` (...), -100 ignored: F.cross_entropy on an
    fp32 copy of the logits."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")


def token_mean_loss(outputs, labels, num_items_in_batch=None, cross_entropy=plain_cross_entropy, align=None):
    """Cross-entropy summed over the micro-batch's label tokens, divided by the label tokens of the whole
    accumulated batch (`num_items_in_batch`, counted by the Trainer over all its micro-batches).

    A correctness fix, not a speed-up (kept with `speed: off`). Summed over the micro-batches of one optimizer step
    this is the per-token mean of the whole step, so the gradient is the same however the step is split (8 x 1,
    4 x 2, the OOM back-off's halvings), even when the micro-batches hold different numbers of tokens.
    transformers 5 sees `**kwargs` in the T5/mT5/BART forward, assumes the model divides by `num_items_in_batch`
    and stops dividing by the accumulation steps, but these models ignore it and return a per-micro-batch mean:
    with the model's own loss the gradient came out k times too large (FIELD-NOTES, tests/test_accumulation.py).

    `cross_entropy(logits, labels)`: the summed cross-entropy, plain or the speed layer's chunked one.
    `align(outputs, labels)` -> (logits, labels) token for token (the family's token_logits_and_labels); None:
    the logits as they are."""
    if align is not None:
        logits, labels = align(outputs, labels)
    else:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    labels = labels.to(logits.device)
    total = cross_entropy(logits, labels)
    count = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
    return total / count


@cache
def summarization_trainer(base: type) -> type:
    """The trial's Trainer: the family's Trainer class (`base`, its trainer_class) with TrialTrainer's
    differences and the batch counting; one class per base, made once."""
    trainer = type("SummarizationTrainer", (TrialTrainer, CountTrainingBatches, base), {"__module__": __name__})
    return compat.evaluate_in_file_order(trainer)  # the dev set in file order, to line up with the dev summaries


class TrialTrainer:
    """Trainer mixin, the recipe's differences: the dev set evaluated in file order and the token-mean loss
    (correctness fixes, speed on or off), each micro-batch's training loss fed to the TrainLossMeter, and, where
    the speed plan turns it on, the speed layer's evaluation (`fast_evaluate`) instead of the family Trainer's."""

    def __init__(self, *args, loss_meter: TrainLossMeter | None = None, telemetry: Telemetry | None = None,
                 fast_evaluate=None, model_computes_loss: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_meter, self.telemetry, self.fast_evaluate = loss_meter, telemetry, fast_evaluate
        if not model_computes_loss:
            # The loss is computed from the logits by token_mean_loss: don't also hand num_items_in_batch to a
            # forward that would ignore it.
            compat.stop_passing_loss_kwargs(self)
        self.remove_callback(PrinterCallback)  # Tune's table and our reports show progress

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.loss_meter is not None:
            self.loss_meter.add(loss)
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if self.fast_evaluate is None or gen_kwargs or isinstance(dataset, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)
        metrics, record = self.fast_evaluate(self, dataset=dataset, metric_key_prefix=metric_key_prefix)
        self.log(metrics)
        # the callbacks also see how the evaluation ran (ReportToTune reports it as eff_speed_eval_*)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         {**metrics, **record.as_metrics()})
        return metrics


# ---------------------------------------------------------------------------------------------------
# Ray's entry point


def train_in_ray(trial: TrialConfig) -> None:
    """A trial inside Ray (from trainables.trial.entry.train_summarizer, which validated the config): the static
    checks again (a search's sampled values were never seen by the driver), resume from its last checkpoint, report."""
    from ray import tune

    from trainables.process import quiet_libraries

    quiet_libraries()  # again, now that transformers is imported: its own verbosity and progress bars
    if not reset_peak_memory():
        log.info("%s: peak_host_mem_gb is this worker's peak since it started (cannot reset it here)",
                 trial.experiment.name)
    errors, _ = static_problems(trial.experiment)
    if errors:
        raise ConfigError(f"the trial's config is invalid: {'; '.join(errors)}")

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(trial, report)
        return
    local = tempfile.mkdtemp(prefix="resume-")
    try:
        resume_dir = checkpoint.to_directory(local)
        log.warning("%s: resuming from checkpoint %s", trial.experiment.name, checkpoint.path)
        run_trial(trial, report, resume_from=resume_dir)
    finally:
        shutil.rmtree(local, ignore_errors=True)
