"""The Tune trainable: one experiment, fine-tuned with Hugging Face's Seq2SeqTrainer.

`train_summarizer(config)` is what Ray runs: it validates the trial's config back into a `TrialConfig` and
calls `run_trial`, a plain function of that config, a `report` callable and an optional checkpoint folder to
resume from (tests run it without Ray). `run_trial` is the recipe, top to bottom:

    decide the settings -> data -> model -> trainer -> train (retried at a smaller micro-batch on CUDA OOM)

At every evaluation (each epoch's end, and every `eval_steps` steps where the config sets it) dev ROUGE is
computed with the config's generation settings, and the metrics are reported together with a checkpoint
(model/adapter in safetensors, optimizer, scheduler, RNG and trainer state), so that a restarted trial
continues where it stopped, with the same data order. This module never reads YAML.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import SequentialSampler
from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, PrinterCallback, Seq2SeqTrainer

from trainables import speed
from trainables.callbacks import (
    EvalAtEpochEnd, Report, ReportToTune, StopOnNaN, TrainLossMeter, TrialRecord, extra_callbacks,
)
from trainables.config import ConfigError, ExperimentConfig, TrialConfig, mode_of, static_problems
from trainables.inference import generation_kwargs
from trainables.layout import TRIAL_META
from trainables.models import EffectiveSettings, Environment, count_parameters, decide_settings, load_model, load_tokenizer
from trainables.telemetry import CountTrainingBatches, Telemetry

log = logging.getLogger("trainables.seq2seq")

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
    data = TrialData.load(trial, settings)
    record = TrialRecord(name=exp.name, experiment=exp.model_dump(), model_path=trial.model.model_path,
                         settings=settings, mode_changes=trial.mode_changes, placement=placement,
                         started=started, prior_s=prior_train_time(resume_from))
    output_dir = tempfile.mkdtemp(prefix=f"hf-{exp.name}-")
    telemetry = Telemetry(gpu=settings.device == "cuda")

    def train_once(settings: EffectiveSettings, resume: str | None):
        record.settings = settings
        trainer = build_trainer(trial, settings, speed_plan, data, output_dir, record, report, telemetry)
        try:
            return trainer.train(resume_from_checkpoint=resume)
        finally:
            del trainer

    try:
        with speed.attention_backends(speed_plan):
            result, settings = retry_on_oom(train_once, settings, speed_plan, output_dir, resume_from, exp.name,
                                            packed=placement if placement["eff_packed"] else None)
        return {"train_runtime": result.metrics.get("train_runtime"), **settings.as_metrics(), **placement}
    finally:
        telemetry.stop()
        shutil.rmtree(output_dir, ignore_errors=True)


def decide_trial_settings(trial: TrialConfig) -> tuple[EffectiveSettings, speed.SpeedPlan, dict[str, Any]]:
    """What this machine will really run (precision, 4-bit, batch), the speed-ups, and the GPU share."""
    import torch

    from trainables.plan import apply_memory_cap, granted_gpu_fraction, replacement_note

    exp, run = trial.experiment, trial.run
    if run.torch_threads:
        torch.set_num_threads(run.torch_threads)
    env = Environment(**run.environment) if run.environment else Environment.probe()  # tests: a fake machine
    settings = decide_settings(exp, env, trial.model.model_source)
    speed_plan = speed.plan(exp, settings, cuda=settings.device == "cuda")  # may enlarge the micro-batch
    # a packed trial caps its allocator at its share: the one Ray gave it (a whole GPU after an overrun)
    placement = apply_memory_cap(trial.placement, granted_gpu_fraction())
    if placement["eff_replaced"]:
        settings.notes.append(replacement_note(trial.placement, placement))
    speed.apply_memory_cap(speed_plan, placement.get("eff_memory_cap_gib"))  # the tighter of the two caps
    for note in settings.notes:
        log.warning("%s: %s", exp.name, note)
    return settings, speed_plan, placement


@dataclass
class TrialData:
    """The tokenizer, its BOS/EOS framing, both splits tokenized, and the dev summaries ROUGE compares with."""

    tokenizer: Any
    framing: Any  # trainables.framing.Framing
    train: Any
    dev: Any
    dev_summaries: list[str]

    @classmethod
    def load(cls, trial: TrialConfig, settings: EffectiveSettings) -> "TrialData":
        from trainables.data import read_split, tokenize_split
        from trainables.framing import probe_framing

        tok = trial.experiment.tokenizer
        tokenizer = load_tokenizer(trial.model.model_path, tok.special_tokens)
        framing = probe_framing(tokenizer, trial.model.model_path)  # BOS/EOS as this tokenizer and model need them
        settings.framing = framing.describe()
        settings.notes.extend(framing.notes)
        frames = {split: read_split(Path(trial.run.data_dir), split, warn=False).frame  # the driver warned
                  for split in ("train", "dev")}
        train, dev = (tokenize_split(frames[split], tokenizer, tok.input_prefix, tok.encoder_max_len,
                                     tok.decoder_max_len, framing) for split in ("train", "dev"))
        return cls(tokenizer, framing, train, dev, frames["dev"]["summary"].tolist())


def build_trainer(trial: TrialConfig, settings: EffectiveSettings, speed_plan, data: TrialData, output_dir: str,
                  record: TrialRecord, report: Report, telemetry: Telemetry | None = None) -> "SummarizationTrainer":
    """The model (seeded, framed, with the generation settings) and its trainer with the trial's callbacks."""
    from transformers import set_seed

    exp = trial.experiment
    # Seed before the LoRA/QLoRA wrapping: the adapters' initial weights come from the global RNG, and the
    # Trainer only seeds it later. Unseeded, two runs of one config (or a run and its retry) differ.
    set_seed(exp.training.seed)
    model = load_model(exp, trial.model.model_path, data.tokenizer, settings)
    data.framing.apply_to(model)  # decoder start, EOS and forced EOS for the Trainer's generate()
    model.generation_config.update(**generation_kwargs(exp.generation))  # what the Trainer's generate() falls back on
    trainable, total = count_parameters(model)
    log.info("%s: %d of %d parameters trainable (%s)", exp.name, trainable, total, settings.model_source)
    meter = TrainLossMeter()
    extras = extra_callbacks(trial.run.callbacks)
    callbacks = [EvalAtEpochEnd(), StopOnNaN(exp.name, settings.precision), ReportToTune(record, report, meter, telemetry),
                 *([telemetry.callback()] if telemetry else []), *extras]
    if exp.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=exp.training.early_stopping_patience))
    trainer = SummarizationTrainer(
        model=model, args=training_arguments(exp, settings, output_dir), train_dataset=data.train,
        eval_dataset=data.dev, processing_class=data.tokenizer,
        data_collator=DataCollatorForSeq2Seq(data.tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=rouge_metrics(exp, data.tokenizer, data.dev_summaries, data.framing),
        compute_loss_func=loss_function(speed_plan), callbacks=callbacks,
        loss_meter=meter, telemetry=telemetry, speed_plan=speed_plan,
    )
    speed.record_model(speed_plan, model, trainer.args)
    for extra in extras:  # the extension point's second half: a callback may wrap what the trainer computes
        if hasattr(extra, "trainer_ready"):
            extra.trainer_ready(trainer)
    return trainer


def retry_on_oom(train_once, settings: EffectiveSettings, speed_plan, output_dir: str, resume_from: str | None,
                 name: str, packed: dict[str, Any] | None = None):
    """`train_once(settings, resume_from)`; on CUDA OOM, again at a smaller micro-batch with more accumulation (the
    same effective batch), resuming from the last local checkpoint. Returns (its result, the settings that ran).

    `packed`: the eff_* placement of a trial capped at a share of a GPU. Its back-off stops at the configured batch:
    out of memory there, the trial overran the plan's share and raises PackedTrialOverrun, so that Ray retries it
    on a whole GPU (trainables.overrun) at the batch it would have run one at a time."""
    import torch

    from trainables.plan import overrun_error

    while True:
        try:
            return train_once(settings, resume_from), settings
        except torch.OutOfMemoryError:
            pass  # out of the except block first: its traceback holds the failed trainer and model
        smaller = speed.back_off(speed_plan, settings)
        if smaller is None and packed:
            raise overrun_error(name, packed, settings.train_batch_size, settings.gradient_accumulation_steps)
        bs, accum = smaller or speed.halve_batch(settings.train_batch_size, settings.gradient_accumulation_steps)
        note = f"CUDA OOM at per-device batch {settings.train_batch_size}: retrying with {bs} x {accum} accumulation"
        log.warning("%s: %s", name, note)
        settings = settings.with_batch(bs, accum, note)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        resume_from = latest_local_checkpoint(output_dir) or resume_from


# ---------------------------------------------------------------------------------------------------
# The pieces


def latest_local_checkpoint(output_dir: str) -> str | None:
    saved = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(saved[-1]) if saved else None


def prior_train_time(resume_from: str | None) -> float:
    """Seconds the trial had trained before this process, from the checkpoint it resumes from."""
    meta = Path(resume_from) / TRIAL_META if resume_from else None
    if meta is None or not meta.is_file():
        return 0.0
    try:
        return float(json.loads(meta.read_text(encoding="utf-8")).get("elapsed_s", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0


def training_arguments(exp: ExperimentConfig, settings: EffectiveSettings, output_dir: str):
    """The config as Seq2SeqTrainingArguments, field by field (tests/test_training_arguments.py checks each).
    The batch and precision are the effective ones (`settings`), which may differ from the config's."""
    from transformers import Seq2SeqTrainingArguments

    t, g = exp.training, exp.generation
    strategy = "steps" if t.eval_steps else "epoch"  # epoch ends are also evaluated with steps (EvalAtEpochEnd)
    return Seq2SeqTrainingArguments(
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
        report_to=[],  # W&B, when asked, logs through Ray Tune's WandbLoggerCallback (trainables.summaries)
        run_name=exp.name,
        use_cpu=settings.device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,  # Tune's trial table shows progress; per-step bars from parallel trials interleave
        log_level="error",  # the Trainer resets transformers' verbosity to this: its advisory warnings are noise here
        **(speed.training_kwargs(settings.speed) if settings.speed else {}),
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


def loss_function(speed_plan: speed.SpeedPlan | None):
    """The Trainer's compute_loss_func: token_mean_loss, its cross-entropy chunked where the speed plan says so."""
    import functools

    return functools.partial(token_mean_loss, chunked=bool(speed_plan and speed_plan.chunked_loss))


def token_mean_loss(outputs, labels, num_items_in_batch=None, chunked: bool = False):
    """Cross-entropy summed over the micro-batch's label tokens, divided by the label tokens of the whole
    accumulated batch (`num_items_in_batch`, counted by the Trainer over all its micro-batches).

    Summed over the micro-batches of one optimizer step this is the per-token mean of the whole step, so the
    gradient is the same however the step is split (8 x 1, 4 x 2, the OOM back-off's halvings), even when the
    micro-batches hold different numbers of tokens. transformers 5 sees `**kwargs` in the T5/mT5/BART forward,
    assumes the model divides by `num_items_in_batch` and stops dividing by the accumulation steps, but these
    models ignore it and return a per-micro-batch mean: the gradient came out k times too large.

    `chunked` (speed: chunked_loss): the same sum from trainables.losses, without full-size fp32 copies of the
    logits; off, the plain F.cross_entropy on an fp32 copy."""
    from trainables.losses import summed_cross_entropy

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    labels = labels.to(logits.device)
    total = summed_cross_entropy(logits, labels, chunked)
    count = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
    return total / count


class SummarizationTrainer(CountTrainingBatches, Seq2SeqTrainer):
    """Seq2SeqTrainer with the trial's three differences: the dev set evaluated in file order, each micro-batch's
    training loss fed to the TrainLossMeter, and the fast evaluation path where the speed plan turns it on."""

    def __init__(self, *args, loss_meter: TrainLossMeter | None = None, telemetry: Telemetry | None = None,
                 speed_plan: speed.SpeedPlan | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_meter, self.telemetry, self.speed_plan = loss_meter, telemetry, speed_plan
        # The loss is computed from the logits by token_mean_loss: don't also hand num_items_in_batch to a forward
        # that would ignore it.
        self.model_accepts_loss_kwargs = False
        self.remove_callback(PrinterCallback)  # Tune's table and our reports show progress

    def _get_eval_sampler(self, eval_dataset):
        # The one private override: with train_sampling_strategy="group_by_length", transformers 5 also
        # length-groups the evaluation batches, and predictions would no longer line up with the dev summaries
        # that compute_metrics scores them against. Public get_eval_dataloader would mean copying its body.
        return SequentialSampler(eval_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.loss_meter is not None:
            self.loss_meter.add(loss)
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not (self.speed_plan and self.speed_plan.fast_eval) or gen_kwargs or isinstance(dataset, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)
        metrics = speed.evaluate(self, self.speed_plan, dataset, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


# ---------------------------------------------------------------------------------------------------
# Ray's entry point


def train_summarizer(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: validate the trial's config (the schema and the static checks again: a
    search's sampled values were never seen by the driver), resume from its last checkpoint, report."""
    from ray import tune

    from trainables.process import configure_trial_worker

    configure_trial_worker()
    trial = TrialConfig.from_ray(config)
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
