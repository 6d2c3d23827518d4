"""The Tune trainable: one experiment, fine-tuned with Hugging Face's Seq2SeqTrainer.

`train_summarizer(config)` is what Ray runs. The work is in `run_trial`, a plain function of the trial's
config, a `report` callable and an optional checkpoint folder to resume from, so that tests can run it
without Ray. At every evaluation (each epoch's end, and every `eval_steps` steps where the config sets
it) dev ROUGE is computed with the config's generation settings, and the metrics are reported together
with a checkpoint (model/adapter in safetensors, optimizer, scheduler, RNG and trainer state), so that a
restarted trial continues where it stopped, with the same data order.

The trial config is `{"experiment": <the validated experiment config as a dict>, "run": <what the driver
decided for this machine: model folder, data folder, mode, ...>}`.
This module never reads YAML.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from trainables import speed
from trainables.config import mode_of
from trainables.inference import generation_kwargs
from trainables.layout import TRIAL_META
from trainables.models import EffectiveSettings, Environment, count_parameters, decide_settings, load_model, load_tokenizer
from trainables.telemetry import CountTrainingBatches, Telemetry

log = logging.getLogger("trainables.seq2seq")

Report = Callable[[dict[str, Any], "str | None"], None]


def halve_batch(batch_size: int, accumulation: int) -> tuple[int, int]:
    """OOM back-off: half the per-device batch, twice the accumulation, same effective batch."""
    if batch_size <= 1:
        raise RuntimeError(
            "CUDA out of memory even at per-device batch 1: lower tokenizer.encoder_max_len / decoder_max_len, "
            "turn on training.gradient_checkpointing or qlora.load_in_4bit, or use a card with more memory"
        )
    return batch_size // 2, accumulation * 2


def _peak_memory() -> dict[str, float]:
    import torch

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {"peak_gpu_mem_gb": round(gpu, 3), "peak_host_mem_gb": round(host, 3)}


class TrainLossMeter:
    """The training loss since the last report: the Trainer subclass adds each micro-batch's loss (already a
    share of its optimizer step's per-token mean), the report reads the mean per optimizer step and resets.
    Independent of `logging_steps`, so a report never lacks it when logging is rarer than evaluation."""

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


def prior_train_time(resume_from: str | None) -> float:
    """Seconds the trial had trained before this process, from the checkpoint it resumes from."""
    meta = Path(resume_from) / TRIAL_META if resume_from else None
    if meta is None or not meta.is_file():
        return 0.0
    try:
        return float(json.loads(meta.read_text(encoding="utf-8")).get("elapsed_s", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0


def _make_callbacks(exp, run, settings: EffectiveSettings, report: Report, started: float, meter: TrainLossMeter,
                    prior_s: float = 0.0, telemetry: Telemetry | None = None):
    import torch
    from transformers import EarlyStoppingCallback, TrainerCallback

    class EvalAtEpochEnd(TrainerCallback):
        """With step-based evaluation, still evaluate (and checkpoint) at every epoch's end, unless an
        evaluation already ran at that very step (else the step is evaluated and reported twice)."""

        def __init__(self):
            self.last_eval_step = -1

        def on_evaluate(self, args, state, control, **kwargs):
            self.last_eval_step = state.global_step

        def on_epoch_end(self, args, state, control, **kwargs):
            if state.global_step != self.last_eval_step:
                control.should_evaluate = True
                control.should_save = True

    class StopOnNaN(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(
                    f"{exp['name']}: training loss is {loss} at step {state.global_step} (precision "
                    f"{settings.precision}); lower training.learning_rate, or use bf16/fp32"
                )

    class ReportToTune(TrainerCallback):
        """After each checkpoint save (which follows each evaluation), report its metrics with it: once per
        evaluated step, with the mean training loss since the previous report."""

        def __init__(self):
            self.last_reported_step = -1

        def on_train_begin(self, args, state, control, **kwargs):
            meter.since_step = state.global_step  # after a resume: the steps trained from here on

        def on_save(self, args, state, control, **kwargs):
            evals = [h for h in state.log_history if "eval_competition_score" in h]
            if not evals or evals[-1].get("step") != state.global_step or state.global_step == self.last_reported_step:
                return
            self.last_reported_step = state.global_step
            last = evals[-1]
            train_loss = meter.take(state.global_step)
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"{exp['name']}: training loss is {train_loss} before step {state.global_step} (precision "
                    f"{settings.precision}); lower training.learning_rate, or use bf16/fp32"
                )
            elapsed = round(prior_s + time.time() - started, 2)  # the whole trial, across resumes
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (ckpt / TRIAL_META).write_text(
                json.dumps({"experiment": exp, "model_path": run["model_path"], "settings": settings.as_metrics(),
                            "elapsed_s": elapsed}, ensure_ascii=False, indent=1)
            )
            metrics = {
                "epoch": round(state.epoch or 0.0, 4),
                "step": state.global_step,
                # rouge1, rouge2, rougeL, competition_score, gen_len without the Trainer's prefix; eval_loss keeps it
                **{(k if k == "eval_loss" else k.removeprefix("eval_")): v for k, v in last.items()
                   if k.startswith("eval_") and not k.endswith(("_runtime", "per_second"))},
                "train_loss": train_loss,
                "elapsed_s": elapsed,
                **_peak_memory(),
                **settings.as_metrics(),
                "eff_mode_changes": "; ".join(run.get("mode_changes", {}).get(exp["name"], [])),
                **(telemetry.collect(last.get("eval_runtime")) if telemetry else {}),  # GPU busy, samples/s
            }
            report(metrics, str(ckpt))
            if telemetry:
                telemetry.restart()

    callbacks = [EvalAtEpochEnd(), StopOnNaN(), ReportToTune(), *([telemetry.callback()] if telemetry else [])]
    patience = exp["training"]["early_stopping_patience"]
    if patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return callbacks + extra_callbacks(run)


def extra_callbacks(run: dict[str, Any]) -> list:
    """The extension point for tests and benchmarks: run["callbacks"], each {"factory": "module:name",
    "kwargs": {...}}, a TrainerCallback class or factory that the trial imports by name (so it reaches Ray's
    workers as plain data) and adds to the Trainer's callbacks."""
    import importlib

    out = []
    for spec in run.get("callbacks") or []:
        module, _, name = spec["factory"].partition(":")
        out.append(getattr(importlib.import_module(module), name)(**spec.get("kwargs", {})))
    return out


def _compute_metrics_fn(exp, tokenizer, references: list[str], framing):
    """ROUGE of the generated dev summaries against the dev set's own summary text.

    Not against the decoded labels: those went through the tokenizer, so they are cut at decoder_max_len and
    carry its spacing and unknown-token losses, which would make every score differ from the competition's."""
    import numpy as np

    from trainables.metrics import KoreanRouge, clean_summary

    scorer = KoreanRouge(exp["metric"]["tokenization"])  # the analyzer loads once per trial
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


def token_mean_loss(outputs, labels, num_items_in_batch=None):
    """Cross-entropy summed over the micro-batch's label tokens, divided by the label tokens of the whole
    accumulated batch (`num_items_in_batch`, counted by the Trainer over all its micro-batches).

    Summed over the micro-batches of one optimizer step this is the per-token mean of the whole step, so the
    gradient is the same however the step is split (8 x 1, 4 x 2, the OOM back-off's halvings), even when the
    micro-batches hold different numbers of tokens. transformers 5 sees `**kwargs` in the T5/mT5/BART forward,
    assumes the model divides by `num_items_in_batch` and stops dividing by the accumulation steps, but these
    models ignore it and return a per-micro-batch mean: the gradient came out k times too large."""
    import torch.nn.functional as F

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    labels = labels.to(logits.device)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                            reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
    return total / count


def _in_order_eval_trainer():
    from torch.utils.data import SequentialSampler
    from transformers import Seq2SeqTrainer

    class InOrderEvalTrainer(CountTrainingBatches, Seq2SeqTrainer):
        """Evaluates the dev set in file order. With train_sampling_strategy="group_by_length", transformers 5
        also length-groups the evaluation batches, and predictions would no longer line up with the dev
        summaries that compute_metrics scores them against. Also feeds each micro-batch's training loss to the
        trial's TrainLossMeter."""

        loss_meter: "TrainLossMeter | None" = None

        def _get_eval_sampler(self, eval_dataset):
            return SequentialSampler(eval_dataset)

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if self.loss_meter is not None:
                self.loss_meter.add(loss)
            return loss

    return InOrderEvalTrainer


def make_trainer(exp, run, settings: EffectiveSettings, model, tokenizer, train, dev, output_dir: str,
                 callbacks: list, compute_metrics=None, meter: "TrainLossMeter | None" = None, trainer_class=None):
    """The Seq2SeqTrainer of a trial, with the exact accumulation loss (token_mean_loss)."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback

    trainer = (trainer_class or _in_order_eval_trainer())(
        model=model,
        args=_training_args(exp, run, settings, output_dir),
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=compute_metrics,
        compute_loss_func=token_mean_loss,
        callbacks=callbacks,
    )
    # The loss is computed from the logits by token_mean_loss: don't also hand num_items_in_batch to a forward
    # that would ignore it.
    trainer.model_accepts_loss_kwargs = False
    trainer.loss_meter = meter
    trainer.remove_callback(PrinterCallback)  # Tune's table and our reports show progress
    return trainer


def _training_args(exp, run, settings: EffectiveSettings, output_dir: str):
    from transformers import Seq2SeqTrainingArguments

    t, g, m = exp["training"], exp["generation"], exp["metric"]
    strategy = "steps" if t["eval_steps"] else "epoch"
    return Seq2SeqTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=t["num_train_epochs"],
        per_device_train_batch_size=settings.train_batch_size,
        per_device_eval_batch_size=t["per_device_eval_batch_size"],
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=t["learning_rate"],
        lr_scheduler_type=t["lr_scheduler_type"],
        warmup_steps=float(t["warmup_ratio"]),  # transformers 5: a float below 1 is a ratio of all steps
        weight_decay=t["weight_decay"],
        max_grad_norm=t["max_grad_norm"],
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=t["eval_steps"],
        save_steps=t["eval_steps"],
        save_total_limit=2,  # local scratch only: Tune keeps the reported checkpoints
        logging_steps=t["logging_steps"],
        logging_nan_inf_filter=False,  # the default swaps a NaN/inf step loss for the mean, hiding it from StopOnNaN
        metric_for_best_model=m["best_metric"],
        greater_is_better=mode_of(m["best_metric"]) == "max",
        predict_with_generate=True,
        generation_max_length=g["max_length"],
        generation_num_beams=g["num_beams"],
        train_sampling_strategy="group_by_length" if t["group_by_length"] else "random",
        seed=t["seed"],
        data_seed=t["seed"],
        report_to=[],  # W&B, when asked, logs through Ray Tune's WandbLoggerCallback (trainables.summaries)
        run_name=exp["name"],
        use_cpu=settings.device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,  # Tune's trial table shows progress; per-step bars from parallel trials interleave
        log_level="error",  # the Trainer resets transformers' verbosity to this: its advisory warnings are noise here
        **(speed.training_kwargs(settings.speed) if settings.speed else {}),
    )


def run_trial(config: dict[str, Any], report: Report, resume_from: str | None = None) -> dict[str, Any]:
    """Train one experiment; `report(metrics, checkpoint_dir)` is called after every evaluation."""
    import torch
    from transformers import set_seed

    from trainables.data import read_split, tokenize_split
    from trainables.framing import probe_framing

    started = time.time()
    exp = config["experiment"]
    run = {**config["run"], **config["run"]["models"][exp["model"]["checkpoint"]]}  # adds model_path, model_source
    if run.get("torch_threads"):
        torch.set_num_threads(run["torch_threads"])
    # run["environment"] is a testing hook: a fake machine (GPU, bf16, Unsloth) for the settings decisions
    settings = decide_settings(exp, run.get("environment") and Environment(**run["environment"]) or Environment.probe(),
                               run["model_source"])
    speed_plan = speed.plan(exp, settings, cuda=settings.device == "cuda")  # may enlarge the micro-batch
    for note in settings.notes:
        log.warning("%s: %s", exp["name"], note)
    from trainables.plan import apply_memory_cap

    placement = apply_memory_cap(run, exp["name"])  # a packed trial caps its allocator at its planned share
    speed.apply_memory_cap(speed_plan, placement.get("eff_memory_cap_gib"))  # the tighter of the two caps
    report = _with_placement(report, placement)

    tok_cfg = exp["tokenizer"]
    tokenizer = load_tokenizer(run["model_path"], tok_cfg["special_tokens"])
    framing = probe_framing(tokenizer, run["model_path"])  # BOS/EOS as this tokenizer and model need them
    settings.framing = framing.describe()
    settings.notes.extend(framing.notes)
    data_dir = Path(run["data_dir"])
    train = tokenize_split(read_split(data_dir, "train", warn=False).frame, tokenizer, tok_cfg["input_prefix"],
                           tok_cfg["encoder_max_len"], tok_cfg["decoder_max_len"], framing)
    dev_frame = read_split(data_dir, "dev", warn=False).frame  # the driver warned
    dev = tokenize_split(dev_frame, tokenizer, tok_cfg["input_prefix"], tok_cfg["encoder_max_len"],
                         tok_cfg["decoder_max_len"], framing)
    compute_metrics = _compute_metrics_fn(exp, tokenizer, dev_frame["summary"].tolist(), framing)
    _InOrderEvalTrainer = speed.evaluating_trainer(_in_order_eval_trainer(), speed_plan)
    prior_s = prior_train_time(resume_from)  # train_time_s counts the whole trial across resumes
    output_dir = tempfile.mkdtemp(prefix=f"hf-{exp['name']}-")
    telemetry = Telemetry(gpu=settings.device == "cuda")
    try:
        while True:
            # Seed before the LoRA/QLoRA wrapping: the adapters' initial weights come from the global RNG, and the
            # Trainer only seeds it later. Unseeded, two runs of one config (or a run and its retry) differ.
            set_seed(exp["training"]["seed"])
            model = load_model(exp, run["model_path"], tokenizer, settings)
            gen = exp["generation"]
            framing.apply_to(model)  # decoder start, EOS and forced EOS for the Trainer's generate()
            model.generation_config.update(**generation_kwargs(gen))  # what the Trainer's generate() falls back on
            trainable, total = count_parameters(model)
            log.info("%s: %d of %d parameters trainable (%s)", exp["name"], trainable, total, settings.model_source)
            meter = TrainLossMeter()
            trainer = make_trainer(exp, run, settings, model, tokenizer, train, dev, output_dir,
                                   _make_callbacks(exp, run, settings, report, started, meter, prior_s, telemetry),
                                   compute_metrics, meter, trainer_class=_InOrderEvalTrainer)
            trainer.telemetry = telemetry
            speed.record_model(speed_plan, model, trainer.args)
            try:
                result = trainer.train(resume_from_checkpoint=resume_from)
                break
            except torch.OutOfMemoryError:
                bs, accum = (speed.back_off(speed_plan, settings)
                             or halve_batch(settings.train_batch_size, settings.gradient_accumulation_steps))
                settings.notes.append(f"CUDA OOM at per-device batch {settings.train_batch_size}: retrying with "
                                      f"{bs} x {accum} accumulation")
                log.warning("%s: %s", exp["name"], settings.notes[-1])
                settings.train_batch_size, settings.gradient_accumulation_steps = bs, accum
                del trainer, model
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                saved = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                resume_from = str(saved[-1]) if saved else resume_from
        return {"train_runtime": result.metrics.get("train_runtime"), **settings.as_metrics(), **placement}
    finally:
        telemetry.stop()
        shutil.rmtree(output_dir, ignore_errors=True)


def _with_placement(report: Report, placement: dict[str, Any]) -> Report:
    """Every report also records where the trial ran: its GPU fraction and memory cap (eff_*)."""
    return lambda metrics, checkpoint_dir: report({**metrics, **placement}, checkpoint_dir)


def train_summarizer(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: resume from the trial's last checkpoint, report to Tune."""
    from ray import tune

    from trainables.process import configure_trial_worker

    configure_trial_worker()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(config, report)
        return
    local = tempfile.mkdtemp(prefix="resume-")
    try:
        resume_dir = checkpoint.to_directory(local)
        log.warning("%s: resuming from checkpoint %s", config["experiment"]["name"], checkpoint.path)
        run_trial(config, report, resume_from=resume_dir)
    finally:
        shutil.rmtree(local, ignore_errors=True)
