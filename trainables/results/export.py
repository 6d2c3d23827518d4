"""The `export` command: a trial's best checkpoint as a standalone Hugging Face model folder.

The model is rebuilt exactly as `predict` rebuilds it (trainables.results.predict.load_for_inference), then:
a 4-bit base is dequantized from its NF4 weights (bitsandbytes, through transformers' `dequantize`) before the
LoRA adapter is merged into it, so the merged weights are the ones the trial evaluated with; the folder is
saved in float32 (or bf16 with --dtype bf16) with the tokenizer and its added speaker/mask tokens, a
generation_config.json carrying the experiment's generation settings, `config.prefix` = the input prefix, and
a README.md model card. `--adapter-only` writes the adapter and tokenizer as the checkpoint holds them.

Each folder is written beside its target under a temporary name and renamed at the end: an export that
fails leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainables import compat
from trainables.config import ExperimentConfig
from trainables.trial.families import family_of
from trainables.driver.launch import UsageError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def choose_trials(experiment_dir: Path, metric: str, trial: str | None, all_trials: bool):
    """[(config name, trial, its best checkpoint folder on disk by `metric`, its table row)] of the trials to
    export, picked as report/predict pick them (the best prefers a trial that did not fail); raises UsageError
    naming what is missing before anything is written. Prints a warning for each chosen trial that failed."""
    from trainables.results.report import (
        best_trial, failure_warning, frame_results, kept_checkpoint, load_analysis, trial_rows,
    )

    analysis = load_analysis(experiment_dir, metric)
    rows = {r["trial_id"]: r for r in trial_rows(experiment_dir, metric, analysis=analysis)}
    names = [t.config["experiment"]["name"] for t in analysis.trials]
    # a search's trials share their config's name: those are told apart by trial id
    label = lambda t: t.config["experiment"]["name"] + ("" if names.count(t.config["experiment"]["name"]) == 1 else f"-{t.trial_id}")
    by_name = {label(t): t for t in analysis.trials}
    if trial is not None:
        match = by_name.get(trial) or next((t for t in analysis.trials if t.trial_id == trial), None)
        if match is None:
            raise UsageError(f"--trial {trial}: no such trial in {experiment_dir}; its trials are {', '.join(sorted(by_name))}")
        chosen = [match]
    elif all_trials:
        chosen = [by_name[n] for n in sorted(by_name)]
    else:
        best, _, note = best_trial(analysis, metric)  # its checkpoint and that note: kept_checkpoint's, below
        if best is None:
            raise UsageError(f"{experiment_dir}: no trial has reported {metric} with a checkpoint yet; nothing to export")
        if note:
            print(f"Note: {note}", flush=True)
        chosen = [best]
    picked = []
    for t in chosen:
        name = label(t)
        checkpoint, note = kept_checkpoint(Path(t.path), frame_results(analysis.trial_dataframes.get(t.trial_id)), metric)
        if note:
            print(f"Note: {name}: {note}", flush=True)
        if checkpoint is None:
            if all_trials:
                continue  # --all: the trials that have one
            raise UsageError(f"--trial {name}: it has no checkpoint with {metric} yet; nothing to export")
        if failure_warning(t):
            print(f"Warning: exporting {failure_warning(t)}; the model card and trial_meta.json say so", flush=True)
        picked.append((name, t, Path(checkpoint), rows.get(t.trial_id, {})))
    if not picked:
        raise UsageError(f"{experiment_dir}: no trial has a checkpoint with {metric} yet; nothing to export")
    return picked


def trial_status(trial) -> dict[str, Any]:
    """What an exported folder records about how its trial ended: its status, and the warning when it did not
    finish (trainables.results.report.failure_warning)."""
    from trainables.results.report import failure_warning

    warning = failure_warning(trial)
    return {"trial_status": trial.status, **({"trial_warning": warning} if warning else {})}


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"--out {target}: exists and is not an empty folder; pick a new folder or empty it")


def _temp_beside(target: Path) -> Path:
    """A fresh folder next to `target` (same file system, so the final rename is atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as err:
        raise UsageError(f"--out {target}: can't write there ({err.strerror or err}); pick a writable folder") from None


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _as_a_plain_save(folder: Path) -> None:
    """The modes a plain save gives under the user's umask (folders 0o777, files 0o666, less the umask): the
    temporary folder was made private (mkdtemp: 0700) and safetensors writes its weights 0600."""
    mask = _current_umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _finish(tmp: Path, target: Path) -> None:
    _as_a_plain_save(tmp)
    if target.is_dir():
        target.rmdir()  # checked empty before; rename can't replace a folder on every platform
    os.replace(tmp, target)


def generation_settings(exp: ExperimentConfig, model, framing) -> dict[str, Any]:
    """The experiment's generation settings on top of the model's own generation config, started and stopped by
    `framing` (the family's Framing) exactly as predict's generation does."""
    gen = exp.generation
    framing.apply_to(model)  # decoder start, eos, pad, forced bos/eos: as the labels taught the model
    config = model.generation_config
    config.update(**family_of(exp.model.architecture).generation_kwargs(gen))
    compat.use_generation_config_as_given(config)  # the settings to use, not defaults to re-derive from config.json
    return config


def untie_weights(model) -> int:
    """Before a merge: give every place that computes with a shared module or weight its own copy; returns how
    many copies were made (and then records `tie_word_embeddings: false`).

    A merge writes each adapter into the weight it wraps. Where that weight is shared, the merge would also change
    the modules that never saw the adapter in training: a tied output head would take the new-token rows trained
    for the input embeddings, and T5's encoder/decoder `embed_tokens` (the very module `shared`, which LoRA wraps
    under that name only) would take a LoRA that only `shared` itself carried. Untied, each module merges what it
    computed with, and the saved model computes what was evaluated."""
    import copy

    import torch

    copies = 0
    seen: set[int] = set()
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name and id(module) in seen:  # the same module under a second name
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, copy.deepcopy(module))
            copies += 1
        seen.add(id(module))
    owners: set[int] = set()
    for module in model.modules():
        weight = dict(module.named_parameters(recurse=False)).get("weight")
        if weight is None:
            continue
        if id(weight) in owners:  # a weight two modules share (an output head tied to the embeddings)
            module.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
            copies += 1
        owners.add(id(module.weight))
    if copies:
        model.config.tie_word_embeddings = False
    return copies


def _forget_tying(model) -> None:
    compat.forget_tied_weights(model)  # transformers 5 caches the tying it saves by


def merged_model(checkpoint: Path, meta: dict[str, Any], dtype: str):
    """(the merged model on the CPU in `dtype`, tokenizer): predict's rebuild, dequantized and merged."""
    import torch

    from trainables.results.predict import load_for_inference

    # quantized where predict would quantize it (the GPU where there is one), so the 4-bit weights are the same
    model, tokenizer = load_for_inference(checkpoint, meta, dequantize=True)
    if hasattr(model, "merge_and_unload"):
        untie_weights(model.get_base_model())
        model = model.merge_and_unload()
        _forget_tying(model)
    model = model.to(device="cpu", dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    return model, tokenizer


def _model_card(name: str, meta: dict[str, Any], row: dict[str, Any], trial, checkpoint: Path, dtype: str,
                adapter_only: bool, metric: str, framing=None) -> str:
    """The folder's README.md: what the model is and scored, how to use it, and the trial's full record."""
    exp, settings = meta["experiment"], meta.get("settings", {})
    weights = _weights_description(exp, settings, dtype, adapter_only)
    return (_card_summary(name, meta, row, trial, checkpoint, weights, metric)
            + _card_usage(exp, framing)
            + _card_record(exp, settings))


def _weights_description(exp: ExperimentConfig, settings: dict[str, Any], dtype: str, adapter_only: bool) -> str:
    if adapter_only:
        return (f"LoRA adapter only: load the base `{exp.model.checkpoint}`, add the tokenizer's tokens "
                "(resize the embeddings), then `PeftModel.from_pretrained`")
    if settings.get("eff_load_in_4bit"):
        return (f"LoRA merged into the base, which trained in 4-bit ({exp.qlora.bnb_4bit_quant_type}): the "
                f"base was dequantized from its 4-bit weights to float32 before the merge; saved in {dtype}")
    if settings.get("eff_lora", True):
        return f"LoRA merged into the full-precision base; saved in {dtype}"
    return f"fully fine-tuned weights; saved in {dtype}"


def _card_summary(name: str, meta: dict[str, Any], row: dict[str, Any], trial, checkpoint: Path, weights: str,
                  metric: str) -> str:
    """The card's title, provenance list and dev scores."""
    from trainables.results.report import failure_warning

    exp, settings = meta["experiment"], meta.get("settings", {})
    scores = {k: row.get(k) for k in ("competition_score", "rouge1", "rouge2", "rougeL", "eval_loss", "best_epoch")}
    run = trial.config.get("run", {})
    source = str(settings.get("eff_model_source", ""))
    standin = " — an offline stand-in with random weights (smoke mode), not the real checkpoint" if source.startswith("standin") else ""
    warning = failure_warning(trial)
    status = f"**Warning: {warning}.**\n\n" if warning else ""
    return f"""# {name}

Korean dialogue summarization, exported by `tune_main7.py export` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}.

{status}- Base model: `{exp.model.checkpoint}` ({exp.model.architecture}; loaded from `{meta['model_path']}`){standin}
- Weights: {weights}
- Trial: {trial.trial_id} (status {trial.status}), best checkpoint by {metric}: `{checkpoint}`
- Data: `{run.get('data_dir', '?')}` (train.csv for training, dev.csv for the scores below); mode `{run.get('mode', '?')}`

## Dev scores (best evaluation by {metric})

```json
{json.dumps(scores, indent=1, default=str)}
```

competition_score = mean of ROUGE-1/2/L F1 x 100 ({exp.metric.tokenization} tokenization).

"""


def _card_usage(exp: ExperimentConfig, framing) -> str:
    """How to load the folder and summarize with it, with the generation settings and framing it carries."""
    prefix = exp.tokenizer.input_prefix
    gen = exp.generation
    family = family_of(exp.model.architecture)
    model_class = family.model_class().__name__
    code, frames = family.export_usage(exp)
    framed = "" if framing is None else (
        f"\nFraming (as in training): {framing.describe()}. {frames}, and `generation_config.json` starts and stops "
        "generation with these ids.\n")
    if framing is not None:  # a merged folder: what loading it shows, where the family says
        framed += family.export_notes(exp.model.architecture)
    return f"""## Use

```python
from transformers import {model_class}, AutoTokenizer
model = {model_class}.from_pretrained(DIR)
tokenizer = AutoTokenizer.from_pretrained(DIR)
{code}
```

`generation_config.json` holds the experiment's settings (beams {gen.num_beams}, length {gen.min_length}-{gen.max_length},
no-repeat n-gram {gen.no_repeat_ngram_size}, length penalty {gen.length_penalty}); `config.prefix` is the input prefix
({prefix!r}) for pipelines that read it. `python tune_main7.py predict --checkpoint DIR` also reads this folder.
{framed}
"""


def _card_record(exp: ExperimentConfig, settings: dict[str, Any]) -> str:
    """The trial's effective settings and its experiment config, as JSON."""
    return f"""## Effective settings of the trial

```json
{json.dumps(settings, indent=1, ensure_ascii=False, default=str)}
```

## Experiment config

```json
{json.dumps(exp.model_dump(), indent=1, ensure_ascii=False, default=str)}
```
"""


def write_model_folder(name: str, trial, checkpoint: Path, row: dict[str, Any], target: Path, adapter_only: bool,
                       dtype: str, metric: str) -> None:
    """One trial's `checkpoint` as a standalone model folder at `target` (merged weights, or the adapter only),
    with its model card; written beside `target` under a temporary name and renamed at the end."""
    from trainables.results.predict import read_meta
    from trainables.layout import TRIAL_META

    meta = read_meta(checkpoint)
    exp = meta["experiment"]
    family = family_of(exp.model.architecture)
    model = None
    tmp = _temp_beside(target)
    try:
        if adapter_only:
            if not (checkpoint / "adapter_config.json").exists():
                raise UsageError(f"--adapter-only: {name} trained without LoRA, so it has no adapter; export it without --adapter-only")
            for f in ADAPTER_FILES:
                if (checkpoint / f).exists():
                    shutil.copy2(checkpoint / f, tmp / f)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
            framing = family.framing(tokenizer, meta["model_path"], exp)  # the base model's config, as the trial probed it
            settings = meta.get("settings", {})
            exported = {"from_checkpoint": str(checkpoint), "adapter_only": True}
        else:
            model, tokenizer = merged_model(checkpoint, meta, dtype)
            framing = family.framing(tokenizer, model.config, exp)  # as predict probes it, before the tokenizer changes
            model.config.prefix = exp.tokenizer.input_prefix
            model.generation_config = generation_settings(exp, model, framing)
            model.save_pretrained(tmp)
            settings = {**meta.get("settings", {}), "eff_lora": False, "eff_load_in_4bit": False}
            exported = {"from_checkpoint": str(checkpoint), "dtype": dtype, "merged": True,
                        "trained_in_4bit": bool(meta.get("settings", {}).get("eff_load_in_4bit"))}
        tokenizer.model_max_length = exp.tokenizer.encoder_max_len  # truncation=True cuts here, as in training
        family.prepare_export(model, tokenizer, framing, exp)  # plain tokenizer(text) frames inputs as training did
        tokenizer.save_pretrained(tmp)
        exported["framing"] = dataclasses.asdict(framing)  # predict reads it (trainables.results.predict.recorded_framing)
        exported.update(trial_status(trial))  # predict warns when it reads a failed trial's export
        (tmp / TRIAL_META).write_text(json.dumps({**meta, "experiment": exp.model_dump(),
                                                  "settings": settings, "export": exported},
                                                 ensure_ascii=False, indent=1))
        (tmp / "README.md").write_text(
            # the card's framing line also vouches for generation_config.json, which an adapter-only folder lacks
            _model_card(name, meta, row, trial, checkpoint, dtype, adapter_only, metric, None if adapter_only else framing),
            encoding="utf-8")
        _finish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(experiment_dir: Path, out: Path, metric: str | None = None, trial: str | None = None,
           all_trials: bool = False, adapter_only: bool = False, dtype: str = "fp32") -> list[Path]:
    """Export the chosen trials (the best by default) ranked by `metric` (None: the one the run used); returns
    the folders written."""
    from trainables.results.report import experiment_metric

    out = Path(out)
    _check_target(out)
    metric, why = experiment_metric(Path(experiment_dir), metric)
    print(f"Checkpoints ranked by {metric} ({why})", flush=True)
    picked = choose_trials(Path(experiment_dir), metric, trial, all_trials)
    targets = [out / name for name, *_ in picked] if all_trials else [out]
    written = []
    if all_trials:  # one folder per trial inside `out`, which appears whole or not at all
        staging = _temp_beside(out)
        try:
            for (name, t, checkpoint, row), target in zip(picked, targets):
                write_model_folder(name, t, checkpoint, row, staging / name, adapter_only, dtype, metric)
                print(f"Exported {name} from {checkpoint}", flush=True)
            _finish(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        written = targets
    else:
        name, t, checkpoint, row = picked[0]
        write_model_folder(name, t, checkpoint, row, out, adapter_only, dtype, metric)
        print(f"Exported {name} from {checkpoint}", flush=True)
        written = [out]
    for path in written:
        print(f"Model folder: {path}", flush=True)
    return written
