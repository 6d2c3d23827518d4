"""Test-set inference: the best checkpoint of the best trial (or a named one) -> submission.csv.

A checkpoint folder holds what the Trainer saved (the LoRA adapter or the whole model, and the tokenizer with
the added speaker/mask tokens) plus `trial_meta.json` (written by seq2seq's ReportToTune): the experiment
config, the base model's folder or hub id, and the effective settings (4-bit or not, LoRA or not). The model is
rebuilt from those: base model (4-bit NF4 when it trained so), embeddings resized to the tokenizer, then the
adapter. Summaries are generated with the config's generation settings (trainables.inference).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trainables.errors import UserError
from trainables.layout import TRIAL_META, read_marker

log = logging.getLogger("tune_main7")



class PredictError(UserError):
    """Something the user must fix before predicting (no checkpoint yet, a folder that isn't one)."""


def best_checkpoint(experiment_dir: Path, metric: str | None = None) -> tuple[str, str]:
    """(the best trial's config name, its best checkpoint folder on disk) of an experiment, ranked by `metric`
    (None: the metric the experiment ran with); says which metric, and why, on the console."""
    from trainables.report import best_trial_and_checkpoint, experiment_metric, load_analysis

    metric, why = experiment_metric(experiment_dir, metric)
    best, checkpoint, note = best_trial_and_checkpoint(load_analysis(experiment_dir, metric), metric)
    if note:
        print(f"Note: {note}", flush=True)
    if best is None or checkpoint is None:
        raise PredictError(f"{experiment_dir}: no trial has a kept checkpoint with {metric} yet; "
                           "wait for the first evaluation, or pass --checkpoint")
    print(f"Best trial by {metric} ({why}): {best.config['experiment']['name']}", flush=True)
    return best.config["experiment"]["name"], checkpoint


def trained_data_dir(experiment_dir: Path | None, checkpoint: Path) -> Path | None:
    """The data folder the experiment trained on: from its marker, else from the trial's params.json."""
    try:
        recorded = (read_marker(experiment_dir) or {}).get("data_dir") if experiment_dir is not None else None
        if recorded:
            return Path(recorded)
        params = Path(checkpoint).resolve().parent / "params.json"
        if params.is_file():
            found = json.loads(params.read_text(encoding="utf-8")).get("run", {}).get("data_dir")
            return Path(found) if found else None
    except (OSError, ValueError, AttributeError):
        return None
    return None


def read_meta(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's trial_meta.json, its "experiment" validated back into the ExperimentConfig that trained it."""
    from trainables.config import ConfigError, validate_experiment

    meta = Path(checkpoint) / TRIAL_META
    if not meta.is_file():
        raise PredictError(f"{checkpoint}: no {TRIAL_META}; pass a checkpoint_00000N folder of a trial of this project")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
        data["experiment"] = validate_experiment(data["experiment"], meta)
        data["model_path"]  # noqa: B018  (needed to rebuild the model)
    except (ValueError, KeyError, TypeError, ConfigError) as err:
        raise PredictError(f"{meta}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]}); "
                           "pass another checkpoint folder") from None
    return data


def recorded_framing(meta: dict[str, Any]):
    """The Framing an exported folder recorded (its saved tokenizer now frames inputs itself, so probing it would
    misread that frame as the labels' too); None for a trial's checkpoint, which is probed as in training."""
    from trainables.framing import Framing

    recorded = meta.get("export", {}).get("framing")
    return Framing(**{**recorded, "notes": tuple(recorded.get("notes", ()))}) if recorded else None


def load_for_inference(checkpoint: Path, meta: dict[str, Any], dequantize: bool = False):
    """(model, tokenizer) rebuilt from a checkpoint folder and its trial_meta.json. `dequantize` (export): a
    4-bit base is turned back into float32 weights from its 4-bit ones, before the adapter goes on."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from trainables.models import grow_vocabulary, quantized_loading

    checkpoint = Path(checkpoint)
    exp, settings = meta["experiment"], meta.get("settings", {})
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))  # saved with the added tokens
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lora = bool(settings.get("eff_lora", (checkpoint / "adapter_config.json").exists()))
    if not lora:  # full fine-tuning: the checkpoint is the whole model
        model = AutoModelForSeq2SeqLM.from_pretrained(str(checkpoint), dtype=torch.float32).to(device)
        return model, tokenizer
    kwargs: dict[str, Any] = {}
    if settings.get("eff_load_in_4bit"):
        kwargs = quantized_loading(exp.qlora, settings.get("eff_precision", "fp32"), device)
    from peft import PeftModel

    model = AutoModelForSeq2SeqLM.from_pretrained(meta["model_path"], dtype=torch.float32, **kwargs)
    if dequantize and kwargs:
        model = model.dequantize(dtype=torch.float32)
    grow_vocabulary(model, tokenizer, exp.training.seed)  # the same rows as in training, before the adapter
    if "device_map" not in kwargs:
        model = model.to(device)
    model = PeftModel.from_pretrained(model, str(checkpoint))
    return model, tokenizer


def predict(experiment_dir: Path | None, checkpoint: str | None, out: Path, data_dir: Path | None = None,
            metric: str | None = None, batch_size: int | None = None) -> Path:
    """Write `out` (fname,summary; one row per test dialogue, UTF-8) and return its path. `data_dir` None: the
    folder the experiment trained on; `metric` None: the one it ran with."""
    from trainables.launch import writable_problem

    out = Path(out)
    problem = (f"--out {out}: is a folder; name the CSV file to write" if out.is_dir()
               else writable_problem(out.parent, "submission", "--out"))
    if problem:  # before any model is loaded or summary generated
        raise PredictError(problem)
    import pandas as pd

    from trainables.data import read_split
    from trainables.inference import generate_summaries

    if checkpoint is None:
        if experiment_dir is None:
            raise PredictError("no experiment found; pass the experiment folder or --checkpoint")
        name, checkpoint = best_checkpoint(experiment_dir, metric)
        print(f"Checkpoint: {checkpoint}", flush=True)
    checkpoint_dir = Path(checkpoint)
    if not checkpoint_dir.is_dir():
        raise PredictError(f"{checkpoint}: not a folder")
    meta = read_meta(checkpoint_dir)
    exp = meta["experiment"]
    if data_dir is None:
        data_dir = trained_data_dir(experiment_dir, checkpoint_dir) or Path(__file__).resolve().parents[1] / "data"
    read_split(data_dir, "test")  # checks the file (columns, empty and duplicate fname), with a clear message
    test = pd.read_csv(Path(data_dir) / "test.csv", encoding="utf-8", dtype=str, keep_default_na=False)
    print(f"Test dialogues: {Path(data_dir) / 'test.csv'} ({len(test)} rows)", flush=True)
    model, tokenizer = load_for_inference(checkpoint_dir, meta)
    dialogues = test["dialogue"].fillna("").tolist()
    todo = [i for i, d in enumerate(dialogues) if d.strip()]
    print(f"Generating {len(todo)} summaries with {exp.name} ({meta['model_path']}; "
          f"beams {exp.generation.num_beams}, max length {exp.generation.max_length})", flush=True)
    generated = generate_summaries(model, tokenizer, [dialogues[i] for i in todo], exp, batch_size=batch_size,
                                   framing=recorded_framing(meta))
    summaries = [""] * len(dialogues)
    for i, text in zip(todo, generated):
        summaries[i] = text
    empty = sum(1 for s in summaries if not s.strip())
    if empty:
        log.warning("%d of %d summaries are empty (%d test dialogues are empty)", empty, len(summaries),
                    len(dialogues) - len(todo))
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"fname": test["fname"], "summary": summaries}).to_csv(out, index=False, encoding="utf-8")
    print(f"Wrote {len(summaries)} rows to {out}", flush=True)
    return out
